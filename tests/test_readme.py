"""The commands of the README and of docs/, checked where a test can run them cheaply (the rest run
elsewhere in the suite: the demo command's pipeline as the smoke build, the report in test_workflow)."""

import os
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from doctrain.stages import PIPELINE
from tests.conftest import ROOT, snakemake

README = (ROOT / "README.md").read_text()
DOCS = {
    path.relative_to(ROOT): path.read_text()
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
}


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
    # (the MLflow stage is a target of its own, results/EXP/mlflow.json)
    for stage in ["dataset_fingerprint", *(stage.name for stage in PIPELINE if stage.name != "register")]:
        assert f'label = "{stage}' in result.stdout  # the synth and fingerprint labels add wildcards


def readme_commands() -> list[str]:
    """The command blocks of the README and docs/: every indented line a user would copy (program
    output, the layout and tables aside), each once."""
    found = []
    for text in DOCS.values():
        for line in text.splitlines():
            command = line.strip().removeprefix("$ ")
            if line.startswith("    ") and command.split(" ")[0] in PROGRAMS and command not in found:
                found.append(command)
    return found


def test_the_readme_is_a_guide_and_links_only_pages_that_exist():
    assert len(README.splitlines()) <= 300
    for page, text in DOCS.items():
        for target in re.findall(r"\]\(([^)#]+\.md)", text):
            assert (ROOT / page.parent / target).exists(), f"{page} links {target}"


PROGRAMS = {
    "snakemake",
    "doctrain",
    "python3",
    "docker",
    "containers/run.sh",
    "V=$(containers/version.sh)",
    "apptainer",
}
# Every command block of the README, and where it is run. A new command must be added here: the
# docs check below runs those it can, the rest name the test that runs them, or why only a person can.
CHECKED = {
    "snakemake --cores 32 results/lcnet050_cosface_96.onnx": "planned: test_workflow test_reference_config_plans_the_whole_chain",
    "python3 -m venv .venv && . .venv/bin/activate && pip install -r envs/requirements.txt -e . && snakemake --cores 2 results/demo.onnx results/demo/evaluation.json": "by hand in a clean clone (the note of each landing gives its time); the smoke build runs the same rules",
    "python3 -m venv .venv && . .venv/bin/activate && pip install -r envs/requirements.txt -e '.[test]' && ruff check . && ruff format --check . && snakemake --lint && snakefmt --check Snakefile rules && pytest": ".ci/run, verbatim (test_ci_runs_the_readme_test_command_verbatim)",
    "doctrain provenance results/demo.onnx": "run below",
    "doctrain manifest build /data/docs -o /data/docs/manifest.csv": "run below",
    "doctrain manifest check /data/docs/manifest.csv": "run below",
    "doctrain status smoke": "run below",
    "doctrain status [EXP ...]": "run below",
    "doctrain classify results/demo.onnx --register templates/ scan1.jpg scan2.png": "run below",
    "snakemake --cores 2 results/compare/smoke-grid.md": "test_sweeps: the sweep, its table, what a changed value reruns",
    "doctrain compare smoke-grid --sort auroc": "test_sweeps, on the sweep it builds",
    'snakemake --cores 2 results/smoke.onnx --config overrides="optimizer.lr=1.0e-3 schedule.epochs=1"': "planned below",
    "snakemake all --cores 32 --resources gpu=4": "planned below (placement: test_sweeps, over fake devices)",
    "snakemake --profile profiles/slurm results/lcnet050_cosface_96.onnx": "planned: test_slurm (the smoke target is built there)",
    "docker build -f containers/Dockerfile --build-arg VERSION=$(containers/version.sh) -t doctrain:$(containers/version.sh) .": "test_containers, with podman",
    "containers/run.sh snakemake --cores 32 results/lcnet050_cosface_96.onnx": "test_containers, with DOCKER=podman and the smoke target",
    "V=$(containers/version.sh)": "test_containers (the image name)",
    "apptainer build --build-arg VERSION=$V containers/doctrain-$V.sif containers/doctrain.def": "only by hand where Apptainer installs (not on this machine kind); the definition is parsed with spython and compared with the Dockerfile in test_container_reference",
    "snakemake --profile profiles/apptainer --cores 32 results/lcnet050_cosface_96.onnx": "test_containers, through tests/apptainer_standin on a real SIF file",
}


def test_every_readme_command_says_where_it_is_run():
    assert sorted(readme_commands()) == sorted(CHECKED)


@pytest.mark.slow
def test_the_readme_doctrain_commands_run_as_written(built, tmp_path, image_tree):
    """Each `doctrain` command of the README, on the smoke build: `demo` reads `smoke`, /data/docs
    a small image tree, templates/ and the scans images of the smoke data."""
    smoke_val = sorted((built / "data/synth/smoke/val").rglob("*.png"))
    templates = built / "templates"
    templates.mkdir(exist_ok=True)
    for path in smoke_val[:: len(smoke_val) // 3][:3]:
        shutil.copyfile(path, templates / f"{path.parent.name}.png")
    for name, path in (("scan1.jpg", smoke_val[1]), ("scan2.png", smoke_val[2])):
        Image.open(path).convert("RGB").save(built / name)
    shutil.copytree(image_tree, tmp_path / "docs")
    env = {**os.environ, "PYTHONPATH": str(built / "src")}
    for command in readme_commands():
        if CHECKED[command] != "run below":
            continue
        command = command.replace("/data/docs", str(tmp_path / "docs")).replace("[EXP ...]", "smoke")
        args = shlex.split(command.replace("demo", "smoke"))
        result = subprocess.run(
            [sys.executable, "-m", *args], cwd=built, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"{command}: {result.stderr[-2000:]}"
        assert result.stdout.strip(), command


def test_the_readme_many_experiments_commands_plan(tmp_path):
    """The overrides and `all` commands of "Many experiments", planned in a copy (--cores 32 on 2
    cores: Snakemake scales the jobs down)."""
    from doctrain import experiments
    from tests.conftest import copy_workflow, planned_jobs

    workdir = copy_workflow(tmp_path / "doctrain")
    for command in readme_commands():
        if CHECKED[command].startswith("planned below"):
            args = shlex.split(command)[1:]
            jobs = planned_jobs(snakemake(workdir, "-n", *args))
            assert jobs["train"] >= 1, command
            if "all" in args:
                every = experiments.find(workdir / "configs").configs
                assert jobs["train"] == len(every) and jobs["compare"] == 1, jobs
