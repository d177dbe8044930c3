"""What an artefact was built from: digests of config, code, data and weights, and the software."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path

import torch

PACKAGES = ("torch", "timm", "lightning", "onnx", "onnxruntime")
CHECKOUT = Path(__file__).resolve().parents[2]  # the library runs from the checkout
# Set by the container images (containers/), so artefacts record which image built them.
IMAGE_VARIABLE = "DOCTRAIN_CONTAINER_IMAGE"


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """Digest of the weights alone (names, dtypes, shapes, bytes): unlike checkpoint files, equal
    for equal weights whatever else a checkpoint stores."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def software_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in PACKAGES}


def git_commit(checkout: str | Path = CHECKOUT) -> str | None:
    """HEAD of the checkout when its tracked files are unchanged, else None (a dirty tree is not
    what any commit says)."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(checkout), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        if git("status", "--porcelain", "--untracked-files=no"):
            return None
        return git("rev-parse", "HEAD")
    except (OSError, subprocess.CalledProcessError):
        return None


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def kernel_path(device: torch.device) -> dict:
    """What a training's arithmetic ran on. torch (ATen) and oneDNN pick their kernels by the CPU's
    instruction set, and the thread count sets the order of sums: the same inputs give other
    weights on another kernel path (training.pin_cpu_kernels narrows it on the CPU)."""
    path = {
        "device": device.type,
        "cpu": cpu_model(),
        "cpu_isa": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        path["gpu"] = torch.cuda.get_device_name(device)
        path.update(cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    return path


def container_image() -> str | None:
    return os.environ.get(IMAGE_VARIABLE) or None


def build_site() -> dict:
    """Where an artefact was built: the container image and the commit. Kept out of the ONNX file,
    whose bytes depend only on what it was built from, so a container and a local build agree."""
    return {"container_image": container_image(), "git_commit": git_commit()}
