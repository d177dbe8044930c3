"""The pipeline's stages, each declared once.

From a declaration come the stage's `doctrain` subcommand (one option per file and value), its
Snakemake rule (inputs, outputs, log, params and shell line: rules/stages.smk), its fingerprint
(the config keys it reads and the code it runs: doctrain.fingerprint) and its place in the chain
of stamps that keeps results honest (doctrain.integrity). Adding a stage is a module with a
`run_stage(settings, **files_and_values)` plus one entry in PIPELINE.

Paths are templates over `{exp}` (the experiment) and, for the manifest, `{manifest}` (its path in
the config); `{init_from}` is another experiment's checkpoint, where the config names one.
Kept free of heavy imports: the workflow reads this on every invocation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Values a stage may ask for besides its files, and who provides them: the workflow passes them
# as params; `doctrain STAGE --config FILE` computes them the same way (doctrain.cli).
COMPUTED = {
    "lineage": "digests of the settings, code and environment behind the model (JSON)",
    "resume_key": "identity of this very job: settings, code, environment and input stamps",
}


@dataclass(frozen=True)
class Stage:
    name: str
    module: str  # carries the stage out with run_stage(settings, **inputs, **outputs, **values)
    help: str
    keys: tuple[str, ...]  # the dotted config keys it reads, and no others
    inputs: dict[str, str]
    outputs: dict[str, str]
    # The output written last: the stage's stamp, holding the sha256 of every other output.
    stamp: str | None = None
    values: dict[str, str] = field(default_factory=dict)  # other arguments, templates like paths
    computed: tuple[str, ...] = ()  # names from COMPUTED
    reports: dict[str, str] = field(default_factory=dict)  # output -> caption file in report/
    # One job serves every experiment of a sweep that agrees on the data settings (doctrain.experiments).
    shared: bool = False

    def optional(self, name: str) -> bool:
        """An input that exists only where the config asks for it."""
        return self.inputs.get(name) == INIT_FROM

    def arguments(self) -> list[str]:
        return [*self.inputs, *self.outputs, *self.values, *self.computed]


MANIFEST = "{manifest}"
# The checkpoint of the experiment that `model.init_from` names (its training, a job of its own);
# no input at all when that is unset.
INIT_FROM = "{init_from}"
INIT_CHECKPOINT = "results/{exp}/model.ckpt"
DATASET_FINGERPRINT = "results/{exp}/dataset.fingerprint.json"

PIPELINE: tuple[Stage, ...] = (
    Stage(
        "synth",
        "doctrain.synth",
        "render the built-in demo dataset and its manifest",
        keys=("data.synth",),
        inputs={},
        outputs={"manifest": "data/synth/{dataset}/manifest.csv"},
    ),
    Stage(
        "validate",
        "doctrain.manifest",
        "check every manifest row; write the validated table",
        keys=("data.manifest", "data.min_classes_per_split", "data.max_image_pixels"),
        inputs={"manifest": MANIFEST},
        outputs={
            "validated": "results/{exp}/data/validated.parquet",
            "report": "results/{exp}/data/validation.json",
        },
        stamp="report",
        shared=True,
    ),
    Stage(
        "prepare",
        "doctrain.cache",
        "decode and resize every image once into a memory-mapped cache",
        keys=("data.image_size", "data.expand_dihedral"),
        inputs={"validated": "results/{exp}/data/validated.parquet"},
        outputs={
            "images": "results/{exp}/cache/images.npy",
            "index": "results/{exp}/cache/index.parquet",
            "summary": "results/{exp}/cache/summary.json",
        },
        stamp="summary",
        shared=True,
    ),
    Stage(
        "train",
        "doctrain.training",
        "train, select the checkpoint by validation AUROC, plot ROC and curves",
        keys=(
            "seed",
            "data.batch_size",
            "data.samples_per_epoch",
            "data.val_batch_size",
            "data.loader",
            "augment",
            "model",
            "loss",
            "optimizer",
            "schedule",
            "trainer",
        ),
        inputs={"cache": "results/{exp}/cache/summary.json", "init_from": INIT_FROM},
        outputs={
            "checkpoint": INIT_CHECKPOINT,
            "metrics": "results/{exp}/metrics.json",
            "log_csv": "results/{exp}/train_log.csv",
            "roc_png": "results/{exp}/roc.png",
            "curves_png": "results/{exp}/training_curves.png",
            "stamp": "results/{exp}/model.stamp.json",
        },
        stamp="stamp",
        values={
            "name": "{exp}",
            "work_dir": "results/{exp}/work/train",
            "tensorboard_dir": "results/{exp}/tensorboard",
        },
        computed=("resume_key",),
        reports={
            "metrics": "metrics.rst",
            "roc_png": "roc.rst",
            "curves_png": "training_curves.rst",
        },
    ),
    Stage(
        "export",
        "doctrain.export",
        "export the selected checkpoint to ONNX with metadata and its threshold (from the calibration pairs)",
        keys=("onnx", "operating_point"),
        inputs={
            "checkpoint": "results/{exp}/model.ckpt",
            "train_stamp": "results/{exp}/model.stamp.json",
            "metrics": "results/{exp}/metrics.json",
            "validation_report": "results/{exp}/data/validation.json",
            "cache": "results/{exp}/cache/summary.json",
        },
        outputs={
            "out": "results/{exp}/model.unverified.onnx",
            "stamp": "results/{exp}/model.unverified.stamp.json",
        },
        stamp="stamp",
        values={"name": "{exp}"},
        computed=("lineage",),
    ),
    Stage(
        "verify",
        "doctrain.parity",
        "check ONNX against PyTorch and the contract; publish on success",
        keys=("parity",),
        inputs={
            "checkpoint": "results/{exp}/model.ckpt",
            "onnx_path": "results/{exp}/model.unverified.onnx",
            "cache": "results/{exp}/cache/summary.json",
        },
        outputs={
            "published": "results/{exp}.onnx",
            "report_path": "results/{exp}/parity.json",
            "provenance_path": "results/{exp}/provenance.json",
        },
        stamp="provenance_path",
        reports={"report_path": "parity.rst"},
    ),
    Stage(
        "evaluate",
        "doctrain.evaluation",
        "metrics of the published ONNX: every validation and test pair, with 95 % intervals",
        keys=("evaluation",),
        inputs={
            "model": "results/{exp}.onnx",
            "cache": "results/{exp}/cache/summary.json",
            "metrics": "results/{exp}/metrics.json",
        },
        outputs={
            "roc_png": "results/{exp}/evaluation_roc.png",
            "report": "results/{exp}/evaluation.json",
        },
        stamp="report",
        values={"name": "{exp}"},
        reports={"report": "evaluation.rst", "roc_png": "evaluation_roc.rst"},
    ),
    Stage(
        "register",
        "doctrain.registry",
        "log the experiment as an MLflow run and register its ONNX file (optional: the [mlflow] extra)",
        keys=(
            "seed",
            "data",
            "augment",
            "model",
            "loss",
            "optimizer",
            "schedule",
            "trainer",
            "onnx",
            "operating_point",
            "parity",
            "evaluation",
        ),
        inputs={
            "model": "results/{exp}.onnx",
            "provenance": "results/{exp}/provenance.json",
            "evaluation": "results/{exp}/evaluation.json",
            "metrics": "results/{exp}/metrics.json",
            "log_csv": "results/{exp}/train_log.csv",
            "roc_png": "results/{exp}/roc.png",
            "curves_png": "results/{exp}/training_curves.png",
            "evaluation_roc_png": "results/{exp}/evaluation_roc.png",
        },
        outputs={"out": "results/{exp}/mlflow.json"},
        stamp="out",
        values={"name": "{exp}"},
    ),
)
STAGES = {stage.name: stage for stage in PIPELINE}
# Stages whose settings and code shape the exported file (its provenance digests cover these).
MODEL_STAGES = ("synth", "validate", "prepare", "train", "export")
# Stages with one job per experiment (synth renders one dataset for all the experiments using it).
EXPERIMENT_STAGES = tuple(stage for stage in PIPELINE if "{exp}" in "".join(stage.outputs.values()))


# Stages whose settings decide the data a model trains on: experiments that agree on them share them.
DATA_STAGES = ("synth", *(stage.name for stage in PIPELINE if stage.shared))


def producers() -> dict[str, Stage]:
    """Output template -> the stage that writes it."""
    return {path: stage for stage in PIPELINE for path in stage.outputs.values()}


def stamp_path(stage: Stage) -> str:
    assert stage.stamp is not None, stage.name
    return stage.outputs[stage.stamp]
