"""Warm starts: `model.init_from` makes another experiment's training an input of this one's."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from doctrain import experiments
from tests.conftest import planned_jobs, snakemake

ROOT = Path(__file__).resolve().parents[1]
FINETUNE = "results/finetune/model.stamp.json"


def _write(configs: Path, name: str, **changes) -> None:
    config = yaml.safe_load((ROOT / "configs/smoke.yaml").read_text())
    for dotted, value in changes.items():
        block, key = dotted.split("__")
        config.setdefault(block, {})[key] = value
    (configs / f"{name}.yaml").write_text(yaml.safe_dump(config))


def test_init_from_must_name_a_usable_experiment_without_loops(tmp_path):
    _write(tmp_path, "smoke")
    _write(tmp_path, "a", model__init_from="b")
    _write(tmp_path, "b", model__init_from="a")
    _write(tmp_path, "c", model__init_from="nope")
    _write(tmp_path, "d", model__init_from="c")
    _write(tmp_path, "e", model__init_from="smoke", model__weights="w.pth")
    _write(tmp_path, "f", model__init_from="smoke")
    found = experiments.find(tmp_path)
    assert sorted(found.configs) == ["f", "smoke"]
    assert "model.init_from makes a loop: a -> b -> a" in found.broken["a"]
    assert "model.init_from names nope, which is no experiment" in found.broken["c"]
    assert "model.init_from names c, which cannot be used" in found.broken["d"]
    assert "set model.weights or model.init_from, not both" in found.broken["e"]


def _network(checkpoint: Path) -> dict[str, torch.Tensor]:
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("net.") and v.is_floating_point()}


@pytest.mark.slow
def test_fine_tuning_on_other_data_starts_from_the_pretrained_network(built, tmp_path):
    """Fine-tune on other rendered data from the network of the smoke build's `smoke`. With a
    learning rate of 1e-9 the fine-tuned weights are the pre-trained ones (all but BatchNorm's
    running statistics, which follow the new data): proof they were loaded."""
    workdir = Path(shutil.copytree(built, tmp_path / "doctrain", symlinks=True))
    other_data = {
        "seed": 2,
        "train_templates": 10,
        "val_templates": 6,
        "photos_per_val_template": 3,
        "width": 160,
    }
    _write(
        workdir / "configs",
        "finetune",
        model__init_from="smoke",
        data__synth=other_data,
        data__manifest="data/synth/finetune/manifest.csv",
        optimizer__lr=1.0e-9,
    )
    assert planned_jobs(snakemake(workdir, "-n", FINETUNE))["train"] == 1  # smoke's is built
    dag = snakemake(workdir, FINETUNE, "--dag").stdout  # built jobs too, dashed
    first, second = re.findall(r'(\d+)\[label = "train"', dag)
    assert {f"{first} -> {second}", f"{second} -> {first}"} & set(re.findall(r"\d+ -> \d+", dag)), dag

    built = snakemake(workdir, FINETUNE)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    log = (workdir / "results/finetune/logs/train.log").read_text()
    assert "starting from the network of results/smoke/model.ckpt (model.init_from)" in log
    pretrained, tuned = (
        _network(workdir / "results/smoke/model.ckpt"),
        _network(workdir / "results/finetune/model.ckpt"),
    )
    assert pretrained.keys() == tuned.keys()
    weights = [k for k in pretrained if not k.endswith(("running_mean", "running_var"))]
    assert all(torch.allclose(pretrained[k], tuned[k], atol=1e-6) for k in weights)
    assert any(not torch.equal(tuned[k], pretrained[k]) for k in pretrained if "running" in k)  # it trained

    # Retraining the pre-trained experiment retrains the fine-tuned one; nothing else does.
    assert planned_jobs(snakemake(workdir, "-n", FINETUNE)) == {}
    smoke = workdir / "configs/smoke.yaml"
    original = smoke.read_text()
    smoke.write_text(original.replace("lr: 2.0e-3", "lr: 3.0e-3"))
    assert planned_jobs(snakemake(workdir, "-n", FINETUNE)) == {"train": 2}
    smoke.write_text(original)

    # A network of another shape is refused with the tensors that differ.
    config = yaml.safe_load((workdir / "configs/finetune.yaml").read_text())
    config["model"]["embed_dim"] = 16
    (workdir / "configs/finetune.yaml").write_text(yaml.safe_dump(config))
    refused = snakemake(workdir, FINETUNE)
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "model.init_from: results/smoke/model.ckpt does not fit this experiment's network" in said, said[
        -3000:
    ]
    assert "head.0.weight has shape [32, 256], this model [16, 256]" in said
