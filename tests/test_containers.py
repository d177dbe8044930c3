"""The training image on a real container runtime (podman, tests/podman_images.py): the pinned
environment, the entrypoint's user mapping, and both routes building the smoke model byte for byte
as a local run does — containers/run.sh (Docker's, with podman) and `snakemake --use-singularity`
(Apptainer's: the image as a real SIF file, tests/sif_image.py, run read-only as the calling user
by the test stand-in tests/apptainer_standin.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from doctrain import container
from tests import podman_images, sif_image
from tests.conftest import ROOT, TARGET, copy_workflow, snakemake_env
from tests.slurm_cluster import on_slurm, sacct

pytestmark = [pytest.mark.slow, pytest.mark.container]
STANDIN = Path(__file__).parent / "apptainer_standin"
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

    # Loader workers hand over batches larger than a container's own 64 MB of shared memory (there,
    # measured: the loader hangs; `timeout` ends the command inside the container, not just podman).
    workers = (
        "import torch; from torch.utils.data import DataLoader; "
        "batches = DataLoader(range(4), batch_size=None, num_workers=2, "
        "collate_fn=lambda i: torch.full((24, 1024, 1024), float(i))); "  # 96 MB each
        "print(sum(float(b[0, 0, 0]) for b in batches))"
    )
    loaded = subprocess.run(
        [str(workdir / "containers/run.sh"), "sh", "-c", f"df -k /dev/shm; timeout 60 python -c '{workers}'"],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    said = loaded.stdout + loaded.stderr[-2000:]
    assert loaded.returncode == 0 and loaded.stdout.strip().endswith("6.0"), said
    assert " 8388608 " in loaded.stdout.splitlines()[1]  # --shm-size=8g, not the host's IPC namespace


@pytest.fixture(scope="module")
def sif(image) -> Path:
    """The training image as a real SIF file (tests/sif_image.py), where any user can read it."""
    sif_image.install()
    folder = Path(tempfile.mkdtemp(prefix="doctrain-sif-", dir="/tmp"))
    folder.chmod(0o755)
    path = folder / f"doctrain-{image['tag'].rsplit(':', 1)[1]}.sif"
    made = sif_image.build(image["env"], image["tag"], path)
    print(f"{path.name}: built in {made['seconds']:.0f} s, {made['bytes'] / 1e9:.2f} GB")
    yield path
    shutil.rmtree(folder)


def apptainer_exec(sif: Path, *args: str, env: dict) -> subprocess.CompletedProcess:
    """`apptainer exec [OPTIONS...] SIF sh -c SCRIPT` through the stand-in; args: options, then SCRIPT."""
    return subprocess.run(
        [str(STANDIN / "apptainer"), "exec", *args[:-1], str(sif), "sh", "-c", args[-1]],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_stand_in_runs_the_sif_read_only_with_the_environment_apptainer_passes(sif, tmp_path):
    """The stand-in's contract, which the route tests below rely on (Apptainer's rules: its
    internal/pkg/util/env/create.go and action script)."""
    host = dict(
        os.environ,
        FROM_HOST="passes",
        PYTHONPATH="/host/site-packages",
        LD_LIBRARY_PATH="/host/lib",
        PATH=f"/host/venv/bin:{os.environ['PATH']}",
        DOCTRAIN_CONTAINER_IMAGE="host",
        APPTAINERENV_OVERRIDDEN="set",
        APPTAINERENV_LD_LIBRARY_PATH="/asked/lib",
        APPTAINER_BINDPATH="/not/forwarded",
        TERM="xterm",
    )
    shown = "env; touch /opt/venv/written || echo READ-ONLY; touch $HOME/home-written; id -un"
    result = apptainer_exec(sif, "--home", str(tmp_path), shown, env=host)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    inside = dict(line.split("=", 1) for line in lines if "=" in line)
    assert inside["FROM_HOST"] == "passes" and inside["PYTHONPATH"] == "/host/site-packages"
    assert inside["PATH"] == "/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert inside["LD_LIBRARY_PATH"] == "/asked/lib" and inside["OVERRIDDEN"] == "set"
    assert inside["DOCTRAIN_CONTAINER_IMAGE"] == f"doctrain:{sif.stem.removeprefix('doctrain-')}"
    assert inside["HOME"] == str(tmp_path) and "APPTAINER_BINDPATH" not in inside
    assert "READ-ONLY" in lines and "Read-only file system" in result.stderr
    assert (tmp_path / "home-written").exists() and lines[-1] == "root"

    result = apptainer_exec(sif, "--cleanenv", "--home", str(tmp_path), "env", env=host)
    inside = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    assert inside.keys() - {"PWD", "SHLVL", "_"} == {
        "TERM",
        "LANG",
        "HOME",
        "PATH",
        "DOCTRAIN_CONTAINER_IMAGE",
        "OVERRIDDEN",
        "LD_LIBRARY_PATH",
        "APPTAINER_CONTAINER",
        "APPTAINER_NAME",
    }, inside


def test_apptainer_route_runs_the_sif_as_a_user_and_builds_the_local_model_byte_for_byte(sif, built):
    """The mission's command, `snakemake --use-singularity`, as a non-root user of this machine
    whose shell carries a PYTHONPATH with a torch of its own and a venv, in a checkout whose path
    has a space and a `;`."""
    user = sif_image.cluster_user()
    sif_image.let_user_run_this_checkout(user)
    sif_image.let_user_use_fuse(user)
    scratch = Path(tempfile.mkdtemp(prefix="doctrain-apptainer-", dir="/tmp"))
    try:
        workdir = copy_workflow(scratch / "lab; shared checkout" / "doctrain")
        version = container.version(workdir)
        image_file = workdir / f"containers/doctrain-{version}.sif"
        site = scratch / "host/site-packages/torch"
        site.mkdir(parents=True)
        (site / "__init__.py").write_text(
            "raise ImportError('a torch from the host PYTHONPATH was imported')\n"
        )
        (scratch / "home").mkdir()
        subprocess.run(["chown", "-R", f"{user.pw_uid}:{user.pw_gid}", str(scratch)], check=True)
        env = snakemake_env(
            PATH=f"{STANDIN}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            HOME=str(scratch / "home"),
            PYTHONPATH=str(site.parent),
            LD_LIBRARY_PATH=str(scratch / "host/lib"),
            VIRTUAL_ENV=str(Path(sys.executable).parents[1]),
        )
        command = [*sif_image.as_user(user), sys.executable, "-m", "snakemake", "--cores", "2"]
        run = dict(cwd=workdir, env=env, capture_output=True, text=True, timeout=900)
        # Without the image file the workflow stops before any job, naming it.
        result = subprocess.run([*command, "--use-singularity", "-n", TARGET], **run)
        assert result.returncode != 0 and f"{image_file.relative_to(workdir)} does not exist" in result.stdout
        image_file.symlink_to(sif)
        os.lchown(image_file, user.pw_uid, user.pw_gid)
        others_before = files_of(user, scratch)
        result = subprocess.run([*command, "--use-singularity", TARGET], **run)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
        assert (workdir / TARGET).read_bytes() == (built / TARGET).read_bytes()
        owners = {(p.lstat().st_uid, p.lstat().st_gid) for p in workdir.rglob("*")}
        assert owners == {(user.pw_uid, user.pw_gid)}
        assert files_of(user, scratch) == others_before
        provenance = json.loads((workdir / "results/smoke/provenance.json").read_text())
        assert provenance["container_image"] == f"doctrain:{version}"
    finally:
        shutil.rmtree(scratch)


def files_of(user, inside: Path) -> set[Path]:
    """What `user` owns in the host's shared folders that Apptainer binds, outside `inside` —
    except torch's compile cache (`import lightning.pytorch` makes /tmp/torchinductor_USER, empty,
    in the training stage; torch's, not doctrain's, and the same for any torch program)."""
    owned = set()
    cache = f"torchinductor_{user.pw_name}"
    for top in (Path("/tmp"), Path("/var/tmp")):
        for path in top.rglob("*"):
            try:
                if cache in path.parts:
                    continue
                if path.lstat().st_uid == user.pw_uid and inside not in path.parents:
                    owned.add(path)
            except OSError:
                continue
    return owned


@pytest.mark.slurm
def test_slurm_with_apptainer_runs_the_steps_as_jobs_in_the_image(sif, cluster, built, tmp_path):
    """Both profiles together: each job runs `apptainer exec` on its node. The smoke build's export
    and verify run again (what runs in the image and what SLURM adds are proven by the whole
    pipeline in the Apptainer-route test and in test_slurm); the container is not a reason to rerun
    here, so the rest of the build stands."""
    workdir = Path(shutil.copytree(built, tmp_path / "doctrain", symlinks=True))
    version = container.version(workdir)
    (workdir / f"containers/doctrain-{version}.sif").symlink_to(sif)
    earlier = {job["id"] for job in sacct(cluster)}
    result = on_slurm(
        cluster,
        workdir,
        "--profile",
        "profiles/apptainer",
        TARGET,
        "--forcerun",
        "export",
        "--rerun-triggers",
        "mtime",
        "params",
        "input",
        PATH=f"{STANDIN}{os.pathsep}{os.environ['PATH']}",
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    jobs = [job for job in sacct(cluster) if job["id"] not in earlier]
    assert sorted(job["comment"].split("_wildcards")[0] for job in jobs) == ["rule_export", "rule_verify"]
    assert all(job["state"] == "COMPLETED" for job in jobs), jobs
    assert (workdir / TARGET).read_bytes() == (built / TARGET).read_bytes()
    provenance = json.loads((workdir / "results/smoke/provenance.json").read_text())
    assert provenance["container_image"] == f"doctrain:{version}"
