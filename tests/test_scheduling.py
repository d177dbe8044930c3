"""What a training asks the scheduler for, from its config (doctrain.scheduling). The sbatch lines
the SLURM plugin makes of these are checked with the plugin's own code in test_distributed."""

import copy

import pytest

from doctrain import scheduling
from doctrain.config import load_config
from tests.conftest import ROOT

RECIPE = load_config(ROOT / "configs/lcnet050_cosface_96.yaml")  # 8 workers, batch 256, 96 px, GPU


def with_trainer(config: dict, **trainer) -> dict:
    changed = copy.deepcopy(config)
    changed["trainer"].update(trainer)
    return changed


@pytest.mark.parametrize(
    ("trainer", "expected"),
    [
        ({}, {"threads": 9, "gpu": 1, "cpus_per_gpu": 9, "mem_mb": 8908, "mpi": None, "tasks": None}),
        (
            {"devices": 4},
            {"threads": 36, "gpu": 4, "mem_mb": 35632, "mpi": "srun", "nodes": 1, "tasks_per_node": 4},
        ),
        (
            {"devices": 4, "num_nodes": 2},
            {"gpu": None, "gres": "gpu:4", "nodes": 2, "tasks_per_node": 4, "tasks": None, "mem_mb": 35632},
        ),
        (
            {"num_nodes": 2},
            {"gres": "gpu:1", "nodes": 2, "tasks": 2, "tasks_per_gpu": 1, "tasks_per_node": None},
        ),
    ],
)
def test_the_reference_recipe_on_one_or_more_gpus_and_nodes(trainer, expected):
    asked = scheduling.train_resources(with_trainer(RECIPE, **trainer))
    assert {key: asked[key] for key in expected} == expected
    assert asked["cpus_per_task"] is None  # GPU ranks ask for their cores per GPU


def test_cpu_ranks_ask_for_their_cores_per_task_and_no_gpu():
    smoke = load_config(ROOT / "configs/smoke.yaml")
    asked = scheduling.train_resources(with_trainer(smoke, devices=2, threads=1))
    assert asked["gpu"] == 0 and asked["gres"] is None
    assert (asked["threads"], asked["cpus_per_task"], asked["tasks_per_node"]) == (2, 1, 2)


def test_every_declared_resource_is_computed_and_only_training_asks():
    assert set(scheduling.resources("train", RECIPE)) == set(scheduling.RESOURCES["train"])
    assert scheduling.resources("export", RECIPE) == {}
    assert (scheduling.threads("verify", RECIPE), scheduling.threads("export", RECIPE)) == (2, 1)
