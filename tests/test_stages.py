"""The stage declarations (doctrain.stages) are the one place a stage is described: the CLI, the
rules and the fingerprints follow from them, and a stage function takes exactly what is declared."""

import importlib
import inspect

import pytest

from doctrain import cli, fingerprint, stages


@pytest.mark.parametrize("stage", stages.PIPELINE, ids=lambda s: s.name)
def test_each_stage_function_takes_exactly_its_declared_arguments(stage):
    run = importlib.import_module(stage.module).run_stage
    assert list(inspect.signature(run).parameters) == ["settings", *stage.arguments()]


@pytest.mark.parametrize("stage", stages.PIPELINE, ids=lambda s: s.name)
def test_each_stage_is_a_subcommand_with_one_option_per_declared_file_and_value(stage):
    command = cli.parser()._subparsers._group_actions[0].choices[stage.name]
    options = {a.dest for a in command._actions} - {"help", "config", "settings"}
    passed = {c for c in stage.computed if c == "lineage"}
    assert options == {*stage.inputs, *stage.outputs, *stage.values, *passed}


def test_every_consumed_file_is_produced_by_a_stage_with_a_stamp():
    producers = stages.producers()
    for stage in stages.EXPERIMENT_STAGES:
        for template in stage.inputs.values():
            if template not in (stages.MANIFEST, stages.INIT_FROM):
                assert producers[template].stamp, f"{stage.name} reads {template}, which no stamp covers"


def test_code_only_commands_use_is_in_no_stage_fingerprint():
    """Editing what only `classify`, `provenance`, `status` or the CLI use reruns nothing."""
    covered = set().union(*(fingerprint.code_digests(s.name) for s in stages.PIPELINE))
    for module in ("doctrain.classify", "doctrain.cli", "doctrain.integrity", "doctrain.stages"):
        assert module not in covered
    assert "doctrain.parity" not in fingerprint.code_digests("export")
