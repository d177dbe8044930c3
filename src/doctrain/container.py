"""Which container image the workflow's rules run in (under `snakemake --sdm apptainer`).

Snakemake decides reruns by the image's name, never its contents, so an image must be named by
version: by default the one built from this checkout's recipe, named by containers/version.sh (a
digest of the recipe); a user's own reference must carry a version tag or a digest."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from doctrain.errors import UserError

_REMOTE = re.compile(
    r"(?P<scheme>[a-z]+)://(?P<name>[^@]+?)(?::(?P<tag>[\w.-]+))?(?P<digest>@sha256:[0-9a-f]{64})?"
)


def version(checkout: str | Path) -> str:
    """The version of the image this checkout's containers/ recipe builds."""
    script = Path(checkout) / "containers" / "version.sh"
    return subprocess.run(["sh", str(script)], capture_output=True, text=True, check=True).stdout.strip()


def default_image(checkout: str | Path) -> str:
    return f"containers/doctrain-{version(checkout)}.sif"


def check_reference(reference: str) -> str:
    """The reference itself when it names one version of an image; a UserError when it can move."""
    if "://" not in reference:
        return reference  # a local image file: its name is the version the user gave it
    match = _REMOTE.fullmatch(reference)
    if match is None:
        raise UserError(
            f"container: cannot read {reference!r} as SCHEME://NAME:TAG or SCHEME://NAME@sha256:DIGEST"
        )
    if match["digest"] is None and match["tag"] in (None, "latest"):
        raise UserError(
            f"container: {reference!r} names a moving tag, so a new image under it would not rerun "
            f"anything; name a version ({match['scheme']}://{match['name']}:1.2.0) or a digest (@sha256:...)"
        )
    return reference


def image(reference: str | None, checkout: str | Path) -> str:
    """The workflow config's `container` if given (checked), else this checkout's own image."""
    return default_image(checkout) if reference is None else check_reference(reference)


def check_present(image: str) -> None:
    """A local image file must exist before any job starts, not fail in every job."""
    if "://" not in image and not Path(image).is_file():
        raise UserError(
            f"{image} does not exist: build it (README, 'The Apptainer route') or name another image "
            "with --config container=IMAGE"
        )
