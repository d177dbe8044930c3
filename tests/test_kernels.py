"""The kernel path a model was trained on: recorded in what is published, pinned for deterministic
CPU trainings (trainer.cpu_kernels), and named by `doctrain status` when it is not this machine's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from doctrain import integrity, provenance

RUN = """
import json, sys
from doctrain import training
from doctrain.config import load_config
from doctrain.fingerprint import stage_settings
settings = stage_settings(load_config(sys.argv[1]), "train")
settings["trainer"].update(json.loads(sys.argv[4]))
result = training.train(settings, sys.argv[2], sys.argv[3])
print("RESULT", json.dumps({
    "sha": result["state_dict_sha256"],
    "kernels": result["train"]["kernels"],
    "auroc": result["val"]["auroc"],
    "keys": sorted(result["module"].state_dict()),
    "compile": result["train"]["compile"],
}))
"""


def _train(built, tmp_path, kernels: str, run: int, compile_mode: str = "none") -> dict:
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            RUN,
            str(built / "configs/smoke.yaml"),
            str(built / "results/smoke/cache"),
            str(tmp_path / f"{kernels}-{compile_mode}-{run}"),
            json.dumps({"cpu_kernels": kernels, "compile": compile_mode}),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")},
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(done.stdout.split("RESULT ", 1)[1])


@pytest.mark.slow
def test_a_compiled_training_repeats_itself_and_checkpoints_the_plain_module(built, tmp_path):
    """trainer.compile on a CPU: TorchInductor's kernels (other weights than eager), the same ones
    again, and a checkpoint whose keys are the eager module's (export and resume read it as is)."""
    compiled = [_train(built, tmp_path, "avx2", run, "default") for run in (1, 2)]
    eager = _train(built, tmp_path, "avx2", 1)
    assert compiled[0]["compile"] == "default" and eager["compile"] == "none"
    assert compiled[0]["sha"] == compiled[1]["sha"]
    assert compiled[0]["keys"] == eager["keys"] and not any("_orig_mod" in k for k in eager["keys"])
    print("compiled", compiled[0]["sha"], compiled[0]["auroc"], "eager", eager["sha"], eager["auroc"])


@pytest.mark.slow
def test_pinned_cpu_kernels_change_the_weights_and_give_the_same_ones_again(built, tmp_path):
    """What the pin changes on this CPU; whether another CPU then computes the same weights needs
    another CPU (the issue notes say what was compared where)."""
    if torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "AVX2"):
        pytest.skip("this CPU's own kernels are the pinned ones")
    pinned = [_train(built, tmp_path, "avx2", run) for run in (1, 2)]
    native = _train(built, tmp_path, "native", 1)
    print(pinned[0]["kernels"], native["kernels"])
    assert [p["kernels"]["cpu_isa"] for p in pinned] == ["AVX2", "AVX2"]
    assert native["kernels"]["cpu_isa"] == torch.backends.cpu.get_cpu_capability()
    assert pinned[0]["sha"] == pinned[1]["sha"]
    assert native["sha"] != pinned[0]["sha"]


@pytest.mark.slow
def test_the_published_model_names_its_kernel_path_and_status_says_when_it_is_another(built, monkeypatch):
    recorded = json.loads((built / "results/smoke/provenance.json").read_text())["kernels"]
    assert recorded == {
        "device": "cpu",
        "cpu": provenance.cpu_model(),
        "cpu_isa": "AVX2",  # the smoke config trains deterministically on the CPU: pinned
        "onednn_max_isa": "AVX2",
        "threads": 1,
    }
    monkeypatch.chdir(built)
    assert integrity.built_elsewhere("smoke") is None
    monkeypatch.setattr(provenance, "cpu_model", lambda: "Another CPU")
    said = integrity.built_elsewhere("smoke")
    there = f"trained on {recorded['cpu']}, AVX2 kernels, 1 threads"
    assert said == f"built elsewhere: {there}; this machine has Another CPU"
