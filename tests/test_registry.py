"""results/EXP/mlflow.json: the smoke build logged to a real MLflow server, started here on
localhost from its own environment (the full `mlflow` package, whose pins differ from doctrain's),
and read back with MLflow's client; then to the checkout's default SQLite store."""

from __future__ import annotations

import importlib.metadata
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from doctrain import _io
from doctrain.onnx_model import read_metadata
from tests.conftest import planned_jobs, snakemake, snakemake_env

pytestmark = pytest.mark.slow
TARGET = "results/smoke/mlflow.json"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` of the client's version, with a SQLite store and proxied artefacts."""
    root = tmp_path_factory.mktemp("mlflow-server")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    version = importlib.metadata.version("mlflow-skinny")
    subprocess.run(
        [str(root / "venv/bin/pip"), "install", "-q", f"mlflow=={version}"],
        check=True,
        capture_output=True,
        timeout=900,
    )
    port = _free_port()
    log = (root / "server.log").open("w")
    server = subprocess.Popen(
        [
            str(root / "venv/bin/mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root}/server.db",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                if answer.status == 200:
                    break
        except OSError:
            pass
        assert server.poll() is None and time.monotonic() < deadline, (root / "server.log").read_text()[
            -3000:
        ]
        time.sleep(0.5)
    yield url
    server.terminate()
    server.wait(timeout=30)


def test_an_experiment_is_logged_and_its_model_registered_on_a_server_and_in_the_default_store(
    built, tmp_path, mlflow_server
):
    from mlflow.artifacts import download_artifacts
    from mlflow.tracking import MlflowClient

    workdir = Path(shutil.copytree(built, tmp_path / "doctrain", symlinks=True))
    env = snakemake_env(MLFLOW_TRACKING_URI=mlflow_server)
    result = snakemake(workdir, TARGET, env=env)
    # (the smoke build has its model; its evaluation is built on the way)
    assert planned_jobs(result) == {"evaluate": 1, "register": 1}, (
        result.stdout[-3000:] + result.stderr[-3000:]
    )
    record = json.loads((workdir / TARGET).read_text())
    assert record["tracking_uri"] == mlflow_server and record["registered_model"] == {
        "name": "smoke",
        "version": 1,
    }

    client = MlflowClient(mlflow_server)
    run = client.get_run(record["run_id"])
    assert run.info.run_name == "smoke" and run.data.params["optimizer.lr"] == "0.002"
    assert run.data.params["data.synth.val_templates"] == "6"  # every resolved setting, by dotted key
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss_epoch")] == [7, 15]
    evaluation = json.loads((workdir / "results/smoke/evaluation.json").read_text())
    assert run.data.metrics["eval/val/auroc"] == pytest.approx(evaluation["val"]["auroc"])
    shipped_fpr = evaluation["calibration"]["at_shipped_threshold"]["fpr"]
    assert run.data.metrics["eval/calibration/shipped_fpr"] == pytest.approx(shipped_fpr)
    records = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "records")}
    assert {"roc.png", "training_curves.png", "evaluation_roc.png", "provenance.json"} <= records

    version = client.get_model_version("smoke", "1")
    provenance = json.loads((workdir / "results/smoke/provenance.json").read_text())
    point = read_metadata(workdir / "results/smoke.onnx")["operating_point"]
    assert version.tags["operating_threshold"] == str(point["threshold"])
    assert version.tags["state_dict_sha256"] == provenance["state_dict_sha256"]
    assert version.tags["dataset_sha256"] == provenance["dataset_sha256"]
    where = client.get_model_version_download_uri("smoke", "1")
    kept = Path(
        download_artifacts(artifact_uri=where, dst_path=str(tmp_path / "kept"), tracking_uri=mlflow_server)
    )
    assert _io.sha256_file(kept / "model.onnx") == _io.sha256_file(workdir / "results/smoke.onnx")

    # a no-op build logs nothing
    assert planned_jobs(snakemake(workdir, TARGET, env=env)) == {}
    assert len(client.search_runs([run.info.experiment_id])) == 1

    # without MLFLOW_TRACKING_URI: the checkout's SQLite store, and a new run and version there
    again = snakemake(workdir, TARGET, "--forcerun", "register")
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    local = f"sqlite:///{workdir / 'mlflow.db'}"
    assert json.loads((workdir / TARGET).read_text())["tracking_uri"] == local
    assert MlflowClient(local).get_model_version("smoke", "1").tags["operating_threshold"] == str(
        point["threshold"]
    )
    assert (workdir / "mlruns").is_dir()  # its artefacts, beside it
