# Parse-time helpers only: find and validate the experiments, and build each rule's params from
# its stage's declaration (src/doctrain/stages.py). The work itself is in src/doctrain.
import atexit
import functools
import os
import re
import shlex
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.io import report as report_output  # `report` alone reads as the directive to snakefmt
from snakemake.logging import logger
from snakemake_interface_executor_plugins.settings import DeploymentMethod

SRC = Path(workflow.basedir) / "src"
# The library runs from the checkout, also inside containers.
sys.path.insert(0, str(SRC))

from doctrain import _io, experiments, fingerprint, integrity, scheduling, stages
from doctrain.container import check_present, image as container_image
from doctrain.config import canonical_json, parse_overrides
from doctrain.errors import UserError

# All the rules run `python -m doctrain`, with the checkout's src/ ahead of any installed copy. The
# prefix is Snakemake's own bash default plus that path, so the commands use no variable from
# outside their rules (as `snakemake --lint` asks). In the Apptainer image the image is the whole
# environment: Apptainer passes the host's variables in, and a host PYTHONPATH (or user site, or
# PYTHONHOME) would put the host's packages ahead of the image's pinned ones.
SRC_QUOTED = shlex.quote(str(SRC))
IN_APPTAINER = DeploymentMethod.APPTAINER in workflow.deployment_settings.deployment_method
if IN_APPTAINER:
    shell.prefix("set -euo pipefail; unset PYTHONHOME; export PYTHONPATH={SRC_QUOTED} PYTHONNOUSERSITE=1; ")
else:
    shell.prefix("set -euo pipefail; export PYTHONPATH={SRC_QUOTED}${{PYTHONPATH:+:$PYTHONPATH}}; ")

# The workflow's own config (--config KEY=VALUE): experiment settings live in configs/, not here.
WORKFLOW_KEYS = {
    "container": "the image the rules run in under --sdm apptainer (default: this checkout's build)",
    "overrides": "dotted experiment keys set in every experiment, e.g. 'optimizer.lr=1.0e-3 schedule.epochs=2'",
}
try:
    unknown = sorted(set(config) - set(WORKFLOW_KEYS))
    if unknown:
        raise UserError(
            f"--config {unknown[0]}: doctrain's workflow takes only "
            + "; ".join(f"{key} ({what})" for key, what in WORKFLOW_KEYS.items())
            + ". Experiment settings go in configs/NAME.yaml, a sweep, or --config overrides=..."
        )
    OVERRIDES_TEXT = str(config.get("overrides") or "")
    OVERRIDES = parse_overrides(OVERRIDES_TEXT, "--config overrides")
    # The image the rules run in under --sdm apptainer: the workflow config's `container`
    # (--config container=IMAGE), else this checkout's own build, named by its version.
    CONTAINER_IMAGE = container_image(config.get("container"), workflow.basedir)
    if IN_APPTAINER:
        check_present(CONTAINER_IMAGE)
except UserError as exc:
    raise WorkflowError(str(exc)) from None


# Planning writes nothing: what the hashes learnt is saved by a run (not a dry run, a lint, a DAG or
# a report), before its jobs start and as it ends (also a run with nothing to do, which Snakemake's
# onstart never sees), and each stage adds what it wrote (_io.write_stamp); saves merge under a lock.
# Jobs on a cluster parse this file again; only the main process checks the data and the results,
# and only for the experiments the run plans (the input functions below).
@functools.cache
def hashes():
    return _io.HashCache(_io.HASH_CACHE)


# A broken or badly named config or sweep stops only its own targets (rule config_error).
FOUND = experiments.find(os.path.relpath(Path(workflow.basedir, "configs")), OVERRIDES, hashes())
EXPERIMENTS = FOUND.configs
if FOUND.broken or FOUND.broken_sweeps:
    logger.warning(f"doctrain: {FOUND.broken_message()}")


def _alternatives(names):
    return "|".join(re.escape(name) for name in names) or "(?!)"


wildcard_constraints:
    exp=_alternatives(EXPERIMENTS),
    broken=_alternatives(FOUND.broken),
    group=_alternatives([experiments.ALL, *FOUND.sweeps]),
    broken_sweep=_alternatives(FOUND.broken_sweeps),
    dataset="[A-Za-z0-9_.-]+",


def settings(stage):
    return lambda w: fingerprint.settings_json(EXPERIMENTS[w.exp], stage)


def code(stage):
    return fingerprint.code_json(stage, hashes())


ENVIRONMENT = fingerprint.environment_digest()


def manifest_of(exp):
    return EXPERIMENTS[exp]["data"]["manifest"]


def manifest(w):
    return manifest_of(w.exp)


def fingerprinted_manifest(w):
    """The manifest as dataset_fingerprint's input: ancient() (a touch is no change; the content
    digest decides), except where the synth rule renders it. Snakemake does not follow a rerun
    through inputs that are all ancient, so a re-render would leave the old model standing until
    the next invocation; a rendered manifest is small enough (< 1 MB) for Snakemake's own checksum
    to tell a touch from a change."""
    if EXPERIMENTS[w.exp]["data"]["synth"] is None:
        return ancient(manifest(w))
    return manifest(w)


def synth_settings(w):
    """The data.synth block of the experiments that render data/synth/{dataset}; they must agree."""
    path = f"data/synth/{w.dataset}/manifest.csv"
    blocks = {
        fingerprint.settings_json(cfg, "synth")
        for cfg in EXPERIMENTS.values()
        if cfg["data"]["synth"] is not None and cfg["data"]["manifest"] == path
    }
    if len(blocks) != 1:
        raise WorkflowError(
            f"{path}: {len(blocks)} different data.synth settings render it; give each its own name"
        )
    return blocks.pop()


def dataset_fingerprint_path(exp):
    return f"results/{exp}/dataset.fingerprint.json"


@functools.cache
def first_break(exp):
    return integrity.first_break(exp, hashes(), FOUND.owner(exp)) if workflow.is_main_process else None


# The data's identities (a stat of every listed file, doctrain.fingerprint) are taken at once, each
# dataset in a helper process, while Snakemake builds its DAG; the DAG waits only for those it needs.
DATA_IDENTITIES = (
    {
        manifest: _io.in_a_child(fingerprint.dataset_identity, manifest)
        for manifest in sorted({cfg["data"]["manifest"] for cfg in EXPERIMENTS.values()})
    }
    if workflow.is_main_process
    else {}
)


@functools.cache
def current_fingerprint(manifest):
    """Experiments often share a manifest: its files are looked at once a run."""
    return fingerprint.dataset_fingerprint(manifest, hashes(), DATA_IDENTITIES[manifest]())


onstart:
    _io.HASH_CACHE.parent.mkdir(exist_ok=True)  # where the stages record what they hash
    hashes().save()


def save_hashes_after_a_run():
    # Only a run has an executor that neither dry-runs nor touches; --lint, --dag, --report have none.
    executes = workflow.executor_plugin is not None and not (workflow.dryrun or workflow.touch)
    if workflow.is_main_process and executes:
        hashes().save()


atexit.register(save_hashes_after_a_run)


PRODUCERS = stages.producers()


def force(path, message):
    """Make the job writing `path` run again, as --forcerun would, but only where the requested
    targets need it (workflow.dag.forcefiles: no public setting forces one file; a test guards it)."""
    if path not in workflow.dag.forcefiles:
        logger.warning(f"doctrain: {message}")
        workflow.dag.forcefiles.add(path)


def force_if_broken(stage_name, exp):
    damage = first_break(exp)
    if damage is not None and damage.stage == stage_name:
        force(damage.stamp, damage.message(exp))


def force_if_data_changed(exp):
    """A dataset fingerprint whose manifest or listed files changed is written again by its job
    (validate and every later step follow), so planning shows the rerun without writing it."""
    if workflow.is_main_process and integrity.data_changed(exp, current_fingerprint(manifest_of(exp))):
        force(
            dataset_fingerprint_path(exp),
            f"{exp}: the data listed in {manifest_of(exp)} changed since it was fingerprinted; "
            "validate and every step after it run again",
        )


_TOLD = set()


def say_what_changed(exp):
    """Once per experiment the run plans: what differs from what built its results, in one line
    (Snakemake's own reason is the stage's whole settings before and after, as JSON)."""
    if exp in _TOLD or not workflow.is_main_process:
        return
    _TOLD.add(exp)
    found = integrity.changes(exp, EXPERIMENTS[exp], FOUND.owner(exp), hashes())
    if found:
        logger.info(f"doctrain: {exp}: changed since it was built: {'; '.join(found)}")


def stage_inputs(stage):
    """The stage's declared inputs and what vouches for them: an artefact of another stage comes as
    ancient() beside that stage's stamp (the stamp holds its digest), the manifest beside its
    dataset fingerprint. When this stage is where the experiment's chain of stamps breaks
    (doctrain.integrity), Snakemake runs the job again, as --forcerun would, but only for jobs that
    the requested targets need."""

    def inputs(w):
        force_if_broken(stage.name, w.exp)
        say_what_changed(w.exp)
        files = {}
        for name, template in stage.inputs.items():
            if template == stages.MANIFEST:
                files[name] = ancient(manifest(w))
                files["dataset_fingerprint"] = dataset_fingerprint_path(w.exp)
                continue
            exp = w.exp
            if template == stages.INIT_FROM:
                exp, template = EXPERIMENTS[w.exp]["model"]["init_from"], stages.INIT_CHECKPOINT
                if exp is None:
                    continue
            producer = PRODUCERS[template]
            exp = FOUND.owner(exp) if producer.shared else exp
            stamp = stages.stamp_path(producer)
            files[name] = template.format(exp=exp) if template == stamp else ancient(template.format(exp=exp))
            if stamp not in stage.inputs.values():
                files[f"{producer.name}_stamp"] = stamp.format(exp=exp)
        return files

    return inputs


def stage_outputs(stage):
    return {
        name: (
            report_output(path, caption=f"../report/{stage.reports[name]}", category="{exp}")
            if name in stage.reports
            else path
        )
        for name, path in stage.outputs.items()
    }


def stage_params(stage, stage_settings=None):
    """What the job is fingerprinted by (a change reruns it), and its command's other arguments."""

    def arguments(w, input, output):
        values = {
            **{name: input[name] for name in stage.inputs if name in input.keys()},
            **{name: output[name] for name in stage.outputs},
            **{name: template.format(exp=w.exp) for name, template in stage.values.items()},
        }
        if "lineage" in stage.computed:
            values["lineage"] = canonical_json(fingerprint.lineage(EXPERIMENTS[w.exp], hashes()))
        return " ".join(f"--{name.replace('_', '-')} {shlex.quote(str(v))}" for name, v in values.items())

    return {
        "stage": stage.name,
        "settings": stage_settings or settings(stage.name),
        "code": code(stage.name),
        "env": ENVIRONMENT,
        "arguments": arguments,
    }


# Every stage's command is this one line, filled in from the job's params: a shell line that named
# the `stage` of the loop in rules/stages.smk would be read when the job runs, and name the loop's
# last stage. The arguments are quoted by stage_params. The log's tee ignores the stop signals
# that SLURM sends to every process of a job: a training told to stop saves where it is and says
# so (doctrain.resume), and a tee that died first would break its output mid-save.
STAGE_SHELL = (
    "OMP_NUM_THREADS={threads} python -m doctrain {params.stage} --settings {params.settings:q}"
    " {params.arguments} 2>&1 | (trap '' TERM USR1; exec tee {log:q})"
)


def shared_or_per_experiment(value_of):
    """value_of(exp) itself where every experiment has the same, else Snakemake's callable: Snakemake
    inspects a callable's signature at each job (a 100-point sweep's trainings: 1,000 resources)."""
    values = [value_of(exp) for exp in EXPERIMENTS]
    if len({canonical_json(value) for value in values}) == 1:
        return values[0]
    return lambda w: value_of(w.exp)


def stage_threads(stage):
    return shared_or_per_experiment(lambda exp: scheduling.threads(stage.name, EXPERIMENTS[exp]))


@functools.cache
def job_resources(stage_name, exp):
    return scheduling.resources(stage_name, EXPERIMENTS[exp])


def stage_resources(stage):
    """Each resource the stage's jobs may ask for (doctrain.scheduling)."""
    return {
        key: shared_or_per_experiment(lambda exp, key=key: job_resources(stage.name, exp)[key])
        for key in scheduling.RESOURCES.get(stage.name, ())
    }


EXPERIMENT_STAGES = stages.EXPERIMENT_STAGES
STAGES = stages.STAGES


def group_members(group):
    return sorted(EXPERIMENTS) if group == experiments.ALL else FOUND.sweeps[group]


def compared_results(w):
    """What the compare table reads of each experiment: its evaluation and the stamps of training and
    publication (each stamp vouches for the files beside it)."""
    return [
        f"results/{exp}/{what}.json"
        for exp in group_members(w.group)
        for what in ("evaluation", "model.stamp", "provenance")
    ]


def config_error(w):
    raise WorkflowError(FOUND.broken_message())
