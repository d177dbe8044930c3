"""Where models are kept: one MLflow run per built experiment, and its verified ONNX file as a
version of a registered model named after the experiment (target `results/EXP/mlflow.json`).

The run holds the resolved settings as params, every logged training figure per step, the
evaluation's figures per split, and the ONNX file, plots and records as artefacts; the model
version's tags carry the shipped threshold and the lineage digests. Each build of the target makes
a new run and a new version (Snakemake builds it again only when the experiment changed, so a no-op
build logs nothing). The tracking server is MLFLOW_TRACKING_URI; unset, a SQLite store in the
checkout (mlflow.db, artefacts in mlruns/). MLflow is an optional extra:
`pip install -e '.[mlflow]'`."""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path

from doctrain import _io
from doctrain.config import flatten
from doctrain.errors import UserError

EXPERIMENT = "doctrain"
DEFAULT_STORE = "mlflow.db"
BATCH = 1000  # metrics per request: MLflow's limit
LINEAGE = ("config_sha256", "code_sha256", "environment_sha256", "dataset_sha256", "state_dict_sha256")


def tracking_uri() -> str:
    """MLFLOW_TRACKING_URI, or the checkout's SQLite store."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(DEFAULT_STORE).resolve()}"


def _mlflow():
    try:
        import mlflow
    except ImportError:
        raise UserError(
            "results/EXP/mlflow.json needs MLflow, an optional extra: pip install -e '.[mlflow]'"
        ) from None
    return mlflow


def metric_name(name: str) -> str:
    """MLflow's spelling of a figure's name: it allows no `@` (val/tpr@0.01 -> val/tpr_at_0.01)."""
    return name.replace("@", "_at_")


def _training_figures(log_csv: Path) -> list[tuple[str, float, int]]:
    """(name, value, step) of every figure the training log holds."""
    with log_csv.open(newline="") as file:
        return [
            (metric_name(name), float(value), int(row["step"]))
            for row in csv.DictReader(file)
            for name, value in row.items()
            if name not in ("epoch", "step") and value != ""
        ]


def _evaluation_figures(evaluation: dict) -> dict[str, float]:
    """The shipped file's figures per held-out split, as flat metric names (eval/test/auroc, ...)."""
    figures = {}
    for split in ("val", "calibration", "test"):
        if split not in evaluation:
            continue
        part = evaluation[split]
        figures[f"eval/{split}/auroc"] = part["auroc"]
        for target, entry in part["at_fpr"].items():
            if entry["resolvable"]:
                figures[metric_name(f"eval/{split}/tpr@{target}")] = entry["tpr"]
        if "at_shipped_threshold" in part:
            figures[f"eval/{split}/shipped_fpr"] = part["at_shipped_threshold"]["fpr"]
            figures[f"eval/{split}/shipped_tpr"] = part["at_shipped_threshold"]["tpr"]
    return figures


def run_stage(
    settings: dict,
    model: str | Path,
    provenance: str | Path,
    evaluation: str | Path,
    metrics: str | Path,
    log_csv: str | Path,
    roc_png: str | Path,
    curves_png: str | Path,
    evaluation_roc_png: str | Path,
    out: str | Path,
    name: str,
) -> None:
    """Log the experiment as an MLflow run, register its ONNX file; write what was made to `out`."""
    mlflow = _mlflow()
    import onnx
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    experiment_id = mlflow.set_experiment(EXPERIMENT).experiment_id
    built_from = json.loads(Path(provenance).read_text())
    shipped = json.loads(Path(evaluation).read_text())
    point = built_from["operating_point"]
    with mlflow.start_run(
        experiment_id=experiment_id, run_name=name, tags={"doctrain.experiment": name}
    ) as run:
        params = {
            key: json.dumps(value) if isinstance(value, list | dict) else value
            for key, value in (leaf for block in settings.items() for leaf in flatten(*block).items())
        }
        mlflow.log_params(params)
        logged_at = int(time.time() * 1000)
        figures = [
            Metric(key, value, logged_at, step) for key, value, step in _training_figures(Path(log_csv))
        ]
        for start in range(0, len(figures), BATCH):  # a request per batch, not per figure
            client.log_batch(run.info.run_id, metrics=figures[start : start + BATCH])
        mlflow.log_metrics(_evaluation_figures(shipped))
        for artefact in (roc_png, curves_png, evaluation_roc_png, provenance, evaluation, metrics, log_csv):
            mlflow.log_artifact(str(artefact), artifact_path="records")
        # One self-contained file, as shipped (MLflow's default moves the weights to a second file).
        logged = mlflow.onnx.log_model(
            onnx.load(str(model)), name="model", registered_model_name=name, save_as_external_data=False
        )
    version = logged.registered_model_version
    tags = {
        "operating_threshold": point["threshold"],
        "operating_fpr": point["fpr"],
        "threshold_chosen_on": point.get("chosen_on", ""),
        **{key: built_from[key] for key in LINEAGE},
    }
    for key, value in tags.items():
        client.set_model_version_tag(name, str(version), key, str(value))
    record = {
        "tracking_uri": uri,
        "experiment_id": experiment_id,
        "run_id": run.info.run_id,
        "registered_model": {"name": name, "version": int(version)},
    }
    _io.write_stamp(out, record, [])
    print(f"{name}: MLflow run {run.info.run_id} at {uri}; registered model {name} version {version}")
