"""The README's commands, checked where a test can run them cheaply (the rest run elsewhere in the
suite: the demo command's pipeline as the smoke build, the report in test_workflow)."""

import re

import pytest

from doctrain.stages import PIPELINE
from tests.conftest import ROOT, snakemake

README = (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command_verbatim():
    setup = [line.strip() for line in README.splitlines() if line.strip().startswith("python3 -m venv")]
    assert len(setup) == 2
    assert setup[0].endswith("snakemake --cores 2 results/demo.onnx results/demo/evaluation.json")
    assert setup[1] in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_the_dag_command_draws_the_build_graph(built):
    command = re.search(r"`snakemake (--dag \S+) results/demo/(\S+) \| dot -Tsvg > dag\.svg`", README)
    assert command, "the README's DAG command changed: update this test"
    result = snakemake(built, *command.group(1).split(), f"results/smoke/{command.group(2)}")
    assert result.returncode == 0 and result.stdout.startswith("digraph snakemake_dag")
    for stage in ["dataset_fingerprint", *(stage.name for stage in PIPELINE)]:
        assert f'label = "{stage}' in result.stdout  # the synth and fingerprint labels add wildcards
