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


# What Apptainer's definition-file parser accepts (its pkg/build/types/parser/deffile.go).
APPTAINER_SECTIONS = {
    "help", "setup", "files", "labels", "environment", "pre", "post", "runscript", "test", "startscript",
    "arguments",
}  # fmt: skip


def _pairs(entries: list[str], separator: str) -> dict[str, str]:
    """NAME=VALUE (or NAME VALUE) entries, with the recipe's version placeholder made one word."""
    pairs = dict(re.split(separator, entry.strip(), maxsplit=1) for entry in entries)
    return {
        name: re.sub(r"\$\{VERSION\}|\{\{ *VERSION *\}\}", "VERSION", value.strip('"'))
        for name, value in pairs.items()
    }


def test_docker_and_apptainer_recipes_build_the_same_environment():
    """Both recipes as spython (the Singularity/Apptainer recipe parser) reads them: the same base,
    files, install commands, environment and labels; Apptainer needs no entrypoint."""
    from spython.main.parse.parsers import DockerParser, SingularityParser

    definition = ROOT / "containers/doctrain.def"
    text = definition.read_text()
    assert set(re.findall(r"^%(\w+)", text, re.M)) <= APPTAINER_SECTIONS
    arguments = re.search(r"^%arguments\n((?:[ \t]+\S.*\n)+)", text, re.M)[1]
    declared = {line.split("=")[0].strip() for line in arguments.splitlines()}
    assert set(re.findall(r"\{\{ *(\w+) *\}\}", text)) <= declared

    docker = DockerParser(str(ROOT / "containers/Dockerfile")).recipe["spython-base"]
    apptainer = SingularityParser(str(definition)).recipe["spython-base"]
    assert apptainer.fromHeader == docker.fromHeader == "docker.io/library/python:3.11-slim-bookworm"
    entrypoint = ["containers/entrypoint.sh", "/usr/local/bin/doctrain-entrypoint"]
    assert [line.split() for line in apptainer.files] == [f for f in docker.files if f != entrypoint]
    docker_run = " ".join(line.rstrip("\\").strip() for line in docker.install if not line.startswith("#"))
    assert all(" ".join(command.split()) in docker_run for command in apptainer.install)
    assert "/opt/venv/bin/pip install" in docker_run and len(apptainer.install) == 2
    docker_env, apptainer_env = _pairs(docker.environ, "="), _pairs(apptainer.environ, "=")
    assert docker_env["PATH"] == apptainer_env["PATH"] == "/opt/venv/bin:$PATH"
    # Each names the image it is: doctrain:V for the Docker image, doctrain-V.sif for the file.
    assert (docker_env["DOCTRAIN_CONTAINER_IMAGE"], apptainer_env["DOCTRAIN_CONTAINER_IMAGE"]) == (
        "doctrain:VERSION",
        "doctrain-VERSION.sif",
    )
    docker_labels = _pairs(re.findall(r'\S+="[^"]*"', docker.labels[0][0]), "=")
    assert docker_labels == _pairs(apptainer.labels, " ")
    assert docker.entrypoint == ["/usr/local/bin/doctrain-entrypoint"] and not apptainer.entrypoint
