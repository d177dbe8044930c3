"""A real SIF file of the training image, for the Apptainer route's test stand-in
(tests/apptainer_standin.py), and a non-root user to run it as.

What `apptainer build doctrain-V.sif docker-daemon://doctrain:V` makes, made without Apptainer: the
podman image's root file system (`podman image mount`) with the image's ENV written as Apptainer
writes it (/.singularity.d/env/10-docker2singularity.sh: PATH as it is, every other variable only
where unset), packed by mksquashfs (lz4, owned by root) and put into a new SIF as its primary
system partition with siftool. The entrypoint is left out, as Apptainer's exec leaves it out."""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.apptainer_standin import VARIABLE
from tests.conftest import ROOT, install_missing
from tests.podman_images import podman

PACKAGES = {
    "mksquashfs": "squashfs-tools",
    "siftool": "siftool",
    "squashfuse": "squashfuse",
    "fusermount3": "fuse3",
    "bwrap": "bubblewrap",
}
USER = "doctrain-sif-test"


def install() -> None:
    install_missing(PACKAGES)


def docker_environment(variables: list[str]) -> str:
    """An image's ENV lines as Apptainer's OCI build writes them (its insertEnv)."""
    lines = ["#!/bin/sh"]
    for variable in variables:
        name, has_value, value = variable.partition("=")
        if not VARIABLE.match(name):
            continue
        escaped = re.sub(r'(["$`\\])', r"\\\1", value)
        if not has_value:
            lines.append(f'export {name}="${{{name}:-}}"')
        elif name == "PATH":
            lines.append(f'export PATH="{escaped}"')
        else:
            lines.append(f'export {name}="${{{name}:-"{escaped}"}}"')
    return "\n".join(lines) + "\n"


def build(env: dict, tag: str, sif: Path) -> dict:
    """The SIF of podman image `tag` at `sif`; its seconds and size."""
    started = time.monotonic()
    config = json.loads(podman(env, "image", "inspect", "--format", "{{json .Config}}", tag).stdout)
    rootfs = podman(env, "image", "mount", tag).stdout.strip()
    with tempfile.TemporaryDirectory() as scratch:
        env_script = Path(scratch) / "10-docker2singularity.sh"
        env_script.write_text(docker_environment(config.get("Env") or []))
        squashfs = Path(scratch) / "rootfs.squashfs"
        pseudo = [
            "/.singularity.d d 755 0 0",
            "/.singularity.d/env d 755 0 0",
            f"/.singularity.d/env/10-docker2singularity.sh f 755 0 0 cat {env_script}",
        ]
        try:
            subprocess.run(
                ["mksquashfs", rootfs, str(squashfs), "-comp", "lz4", "-all-root", "-quiet", "-no-progress"]
                + [arg for line in pseudo for arg in ("-p", line)],
                check=True,
                capture_output=True,
                timeout=900,
            )
        finally:
            podman(env, "image", "unmount", tag)
        sif.unlink(missing_ok=True)
        subprocess.run(["siftool", "new", str(sif)], check=True, capture_output=True)
        subprocess.run(
            ["siftool", "add", str(sif), str(squashfs)]
            + ["--datatype", "4", "--parttype", "2", "--partfs", "1", "--partarch", "2"],
            check=True,
            capture_output=True,
            timeout=600,
        )
    sif.chmod(0o644)
    return {"seconds": time.monotonic() - started, "bytes": sif.stat().st_size}


def cluster_user() -> pwd.struct_passwd:
    """A non-root user of this machine (made once), like the cluster user who runs Apptainer."""
    try:
        return pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--user-group", "--no-create-home", "--shell", "/bin/sh", USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(USER)


def let_user_run_this_checkout(user: pwd.struct_passwd) -> list[Path]:
    """Make sure `user` can run this checkout's Snakemake and library with this venv's Python.
    Where they cannot, folders above the checkout and the interpreter that others cannot enter get
    the search bit (o+x, not read); the folders changed."""
    check = [*as_user(user), sys.executable, "-c", "import snakemake, doctrain"]
    changed = []
    if subprocess.run(check, capture_output=True, cwd="/").returncode != 0:
        for path in (ROOT, Path(sys.executable).resolve()):
            for folder in reversed(path.parents):
                mode = folder.stat().st_mode
                if not mode & 0o001:
                    os.chmod(folder, mode | 0o001)
                    changed.append(folder)
        result = subprocess.run(check, capture_output=True, text=True, cwd="/")
        assert result.returncode == 0, f"{user.pw_name} cannot run this checkout: {result.stderr[-2000:]}"
    return changed


def let_user_use_fuse(user: pwd.struct_passwd) -> bool:
    """Unprivileged Apptainer mounts a SIF with squashfuse through /dev/fuse, which udev makes
    0666 on a workstation or a cluster node; some container runtimes create it 0600 (this
    machine's did). Where `user` cannot open it, it gets that usual mode; whether it changed."""
    check = [*as_user(user), "sh", "-c", "test -r /dev/fuse && test -w /dev/fuse"]
    if subprocess.run(check, capture_output=True).returncode == 0:
        return False
    os.chmod("/dev/fuse", 0o666)
    return True


def as_user(user: pwd.struct_passwd) -> list[str]:
    """The command prefix that runs a program as `user` (and its groups), nothing else changed."""
    return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups", "--"]
