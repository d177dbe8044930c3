"""A real container runtime for the container tests: rootful podman.

On this machine kind no Docker engine runs and Apptainer cannot be installed, but Debian's podman
does, with two settings (runtime runc, since crun fails on the cgroups here; ulimits within the
machine's hard limits), given through a containers.conf named by CONTAINERS_CONF. No image registry
is reachable, so the base image is a Debian rootfs made with debootstrap and imported. The training
image is then built from containers/Dockerfile with BASE_IMAGE pointing at it, with this machine's
pip settings (local wheel stores, CA bundle) passed into the build only."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from doctrain.container import version
from tests.conftest import install_missing

PACKAGES = {"podman": "podman", "runc": "runc", "debootstrap": "debootstrap"}
BASE_IMAGE = "localhost/doctrain-test-base:bookworm"
IMAGE_REPOSITORY = "localhost/doctrain"
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]

[engine]
runtime = "runc"
"""
# What the image build needs from this machine's pip configuration, as build arguments.
PIP_SETTINGS = {"find-links": "PIP_FIND_LINKS", "extra-index-url": "PIP_EXTRA_INDEX_URL", "cert": "PIP_CERT"}


def install() -> None:
    install_missing(PACKAGES)


def environment(config_dir: Path) -> dict[str, str]:
    conf = config_dir / "containers.conf"
    conf.write_text(CONTAINERS_CONF)
    return dict(os.environ, CONTAINERS_CONF=str(conf))


def podman(env: dict, *args: str, timeout: int = 600, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["podman", *args], env=env, capture_output=True, text=True, timeout=timeout, **kwargs
    )
    if result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} failed:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
        )
    return result


def ensure_base(env: dict, workdir: Path) -> None:
    """A minimal Debian 12 with Python 3.11 (what python:3.11-slim-bookworm holds), made once."""
    if subprocess.run(["podman", "image", "exists", BASE_IMAGE], env=env).returncode == 0:
        return
    rootfs = workdir / "rootfs"
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            "--include=python3,python3-venv,ca-certificates",
            "bookworm",
            str(rootfs),
            "http://deb.debian.org/debian",
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    podman(env, "import", "-", BASE_IMAGE, stdin=tar.stdout)
    tar.wait()
    shutil.rmtree(rootfs)


def _pip_settings() -> dict[str, str]:
    """This machine's pip settings of PIP_SETTINGS, from `pip config list` (files and environment)."""
    listed = subprocess.run(
        ["python3", "-m", "pip", "config", "list"], capture_output=True, text=True, check=True
    ).stdout
    found = {}
    for line in listed.splitlines():
        match = re.fullmatch(r"[^=]*?\.([a-z-]+)='(.*)'", line.strip())
        if match and match[1] in PIP_SETTINGS:
            found[PIP_SETTINGS[match[1]]] = match[2]
    return found


def _local_paths(value: str) -> list[str]:
    paths = [
        item.removeprefix("file://")
        for item in value.split()
        if "://" not in item or item.startswith("file://")
    ]
    # An index URL names .../simple; the wheel files it links to lie beside it.
    return [str(Path(path).parent) if path.rstrip("/").endswith("/simple") else path for path in paths]


def build(env: dict, checkout: Path) -> dict:
    """podman build of containers/Dockerfile on the debootstrap base; its tag, seconds and size."""
    image_version = version(checkout)
    tag = f"{IMAGE_REPOSITORY}:{image_version}"
    args = ["build", "-f", "containers/Dockerfile", "--network", "host"]
    args += ["--build-arg", f"BASE_IMAGE={BASE_IMAGE}", "--build-arg", f"VERSION={image_version}"]
    for name, value in _pip_settings().items():
        args += ["--build-arg", f"{name}={value}"]
        args += [
            arg for path in _local_paths(value) if os.path.exists(path) for arg in ("-v", f"{path}:{path}:ro")
        ]
    started = time.monotonic()
    podman(env, *args, "-t", tag, ".", cwd=checkout, timeout=1500)
    seconds = time.monotonic() - started
    size = podman(env, "image", "inspect", "--format", "{{.Size}}", tag).stdout.strip()
    return {"tag": tag, "seconds": seconds, "bytes": int(size)}


def remove_other_versions(env: dict, keep: str) -> None:
    """Old builds of the image (one per recipe version, several GB each) would fill the disk."""
    listed = podman(env, "images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
    stale = [image for image in listed if image.startswith(IMAGE_REPOSITORY + ":") and image != keep]
    if stale:
        podman(env, "rmi", "--force", *stale)
