"""The training image on a real container runtime (podman, tests/podman_images.py): the pinned
environment, the entrypoint's user mapping, and both routes — containers/run.sh (Docker's) and
`snakemake --sdm apptainer` (through the test adapter in tests/apptainer_adapter/) — building the
smoke model byte for byte as a local run does."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from doctrain import container
from tests import podman_images
from tests.conftest import ROOT, TARGET, copy_workflow, snakemake, snakemake_env
from tests.slurm_cluster import on_slurm, sacct

pytestmark = [pytest.mark.slow, pytest.mark.container]
ADAPTER = Path(__file__).parent / "apptainer_adapter"
USER, GROUP = 1234, 2345  # a caller who is not root and exists nowhere in the image


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> dict:
    if os.geteuid() != 0:
        pytest.skip("rootful podman: the test runtime runs as root")
    podman_images.install()
    workdir = tmp_path_factory.mktemp("podman")
    env = podman_images.environment(workdir)
    started = time.monotonic()
    podman_images.ensure_base(env, workdir)
    print(f"base image ready in {time.monotonic() - started:.0f} s")
    built = podman_images.build(env, ROOT)
    podman_images.remove_other_versions(env, built["tag"])
    print(f"{built['tag']}: built in {built['seconds']:.0f} s, {built['bytes'] / 1e9:.2f} GB")
    return {**built, "env": env}


def run_in(image: dict, *args: str, volumes: tuple[str, ...] = (), env: tuple[str, ...] = ()) -> str:
    options = [arg for volume in volumes for arg in ("-v", volume)] + [arg for e in env for arg in ("-e", e)]
    return podman_images.podman(image["env"], "run", "--rm", *options, image["tag"], *args).stdout


def test_image_holds_the_pinned_environment_and_no_project_code(image):
    pins = dict(
        line.split("==") for line in (ROOT / "envs/requirements.txt").read_text().splitlines() if "==" in line
    )
    script = (
        "import importlib.metadata as m, sys, json; "
        "print(json.dumps({n: m.version(n) for n in sys.argv[1:]}))"
    )
    installed = json.loads(run_in(image, "python", "-c", script, *pins))
    assert installed == pins
    missing = run_in(image, "python", "-c", "import importlib.util as u; print(u.find_spec('doctrain'))")
    assert missing.strip() == "None"


def test_entrypoint_runs_the_command_as_user_and_group_ids(image, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    shared.chmod(0o777)
    out = run_in(
        image,
        "bash",
        "-c",
        "id -u; id -g; echo $HOME; touch /shared/theirs",
        volumes=(f"{shared}:/shared",),
        env=(f"USER_ID={USER}", f"GROUP_ID={GROUP}"),
    )
    assert out.split() == [str(USER), str(GROUP), "/home/doctrain"]
    written = (shared / "theirs").stat()
    assert (written.st_uid, written.st_gid) == (USER, GROUP)

    out = run_in(image, "bash", "-c", "id -u; touch /shared/as-is", volumes=(f"{shared}:/shared",))
    assert out.split() == ["0"]
    assert (shared / "as-is").stat().st_uid == 0


def test_entrypoint_refuses_ids_that_are_not_numbers(image):
    with pytest.raises(AssertionError, match=r"USER_ID must be a numeric id \(got .alice.\)"):
        run_in(image, "true", env=("USER_ID=alice", f"GROUP_ID={GROUP}"))


def test_docker_route_builds_the_local_model_byte_for_byte(image, built, tmp_path):
    workdir = copy_workflow(tmp_path / "doctrain")
    subprocess.run(["chown", "-R", f"{USER}:{GROUP}", str(workdir)], check=True)
    env = dict(image["env"], DOCKER="podman", GPUS="", USER_ID=str(USER), GROUP_ID=str(GROUP))
    result = subprocess.run(
        [str(workdir / "containers/run.sh"), "snakemake", "--cores", "2", TARGET],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (workdir / TARGET).read_bytes() == (built / TARGET).read_bytes()
    owners = {(p.stat().st_uid, p.stat().st_gid) for p in (workdir / "results").rglob("*")}
    assert owners == {(USER, GROUP)}
    provenance = json.loads((workdir / "results/smoke/provenance.json").read_text())
    assert provenance["container_image"] == image["tag"].removeprefix("localhost/")


def test_apptainer_route_builds_the_local_model_byte_for_byte(image, built, tmp_path):
    workdir = copy_workflow(tmp_path / "doctrain")
    version = container.version(workdir)
    sif = workdir / f"containers/doctrain-{version}.sif"
    # Without the image file the workflow stops before any job, naming it.
    env = snakemake_env(
        PATH=f"{ADAPTER}{os.pathsep}{os.environ['PATH']}",
        CONTAINERS_CONF=image["env"]["CONTAINERS_CONF"],
    )
    result = snakemake(workdir, "--profile", "profiles/apptainer", "-n", TARGET, env=env)
    assert result.returncode != 0 and f"{sif.relative_to(workdir)} does not exist" in result.stdout
    # The adapter runs the podman image of the version this file's name gives.
    sif.touch()
    result = snakemake(workdir, "--profile", "profiles/apptainer", TARGET, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (workdir / TARGET).read_bytes() == (built / TARGET).read_bytes()
    provenance = json.loads((workdir / "results/smoke/provenance.json").read_text())
    assert provenance["container_image"] == f"doctrain:{version}"


@pytest.mark.slurm
def test_slurm_with_apptainer_runs_every_step_as_a_job_in_the_image(image, cluster, built, tmp_path):
    workdir = copy_workflow(tmp_path / "doctrain")
    version = container.version(workdir)
    (workdir / f"containers/doctrain-{version}.sif").touch()
    earlier = {job["id"] for job in sacct(cluster)}
    result = on_slurm(
        cluster,
        workdir,
        "--profile",
        "profiles/apptainer",
        TARGET,
        PATH=f"{ADAPTER}{os.pathsep}{os.environ['PATH']}",
        CONTAINERS_CONF=image["env"]["CONTAINERS_CONF"],
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    jobs = [job for job in sacct(cluster) if job["id"] not in earlier]
    assert len(jobs) == 7 and all(job["state"] == "COMPLETED" for job in jobs), jobs
    assert (workdir / TARGET).read_bytes() == (built / TARGET).read_bytes()
    provenance = json.loads((workdir / "results/smoke/provenance.json").read_text())
    assert provenance["container_image"] == f"doctrain:{version}"
