"""Which image the rules run in: versioned names only, and a missing local image named up front."""

from __future__ import annotations

import re
import subprocess

import pytest

from doctrain import container
from doctrain.errors import UserError
from tests.conftest import ROOT


@pytest.mark.parametrize(
    "reference",
    [
        "docker://ghcr.io/lab/doctrain:1.2.0",
        "docker://registry:5000/doctrain:2026.11",
        "docker://lab/doctrain@sha256:" + "ab" * 32,
        "/images/doctrain-1.2.0.sif",
    ],
)
def test_versioned_references_are_taken_as_they_are(reference):
    assert container.image(reference, ROOT) == reference


@pytest.mark.parametrize(
    "reference", ["docker://lab/doctrain", "docker://lab/doctrain:latest", "docker://registry:5000/doctrain"]
)
def test_moving_tags_are_refused_with_the_fix(reference):
    with pytest.raises(UserError, match="names a moving tag.*name a version"):
        container.image(reference, ROOT)


def test_default_image_is_named_by_the_digest_of_the_recipe():
    recipe = [
        "envs/requirements.txt",
        "containers/Dockerfile",
        "containers/doctrain.def",
        "containers/entrypoint.sh",
    ]
    digest = subprocess.run(
        ["sha256sum"],
        input=b"".join((ROOT / path).read_bytes() for path in recipe),
        capture_output=True,
        check=True,
    ).stdout.decode()[:12]
    assert container.image(None, ROOT) == f"containers/doctrain-{digest}.sif"


def test_a_missing_local_image_names_itself_and_the_fix(tmp_path):
    with pytest.raises(UserError, match=r"doctrain-x\.sif does not exist: build it"):
        container.check_present(str(tmp_path / "doctrain-x.sif"))
    (tmp_path / "doctrain-x.sif").touch()
    container.check_present(str(tmp_path / "doctrain-x.sif"))
    container.check_present("docker://lab/doctrain:1.2.0")


def test_docker_and_apptainer_recipes_build_the_same_environment():
    dockerfile = (ROOT / "containers/Dockerfile").read_text()
    definition = (ROOT / "containers/doctrain.def").read_text()
    docker_base = re.search(r"^ARG BASE_IMAGE=(\S+)", dockerfile, re.M)[1]
    assert re.search(r"^From: (\S+)", definition, re.M)[1] == docker_base
    for recipe in (dockerfile, definition):
        assert "envs/requirements.txt /opt/doctrain/requirements.txt" in recipe
        assert "/opt/venv/bin/pip install --no-cache-dir --disable-pip-version-check" in recipe
        assert "-r /opt/doctrain/requirements.txt" in recipe
        assert re.search(r"PATH=/opt/venv/bin:\$PATH", recipe)
        assert "DOCTRAIN_CONTAINER_IMAGE=doctrain" in recipe
