"""The real consumer: the `docclassifier-docsaid` inference package loads a model this pipeline
published, registers templates and classifies with it (issue 11).

The package and its ONNX engine (`capybara-docsaid`) are installed in a virtual environment of
their own, as a user of the package would have them, with the settings that make them work offline
on this machine kind (../shared/upstream-docclassifier.md). Where they cannot be installed (no
package index, not root for the Debian packages) the test is skipped, saying why."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TARGET, apt_install

pytestmark = [pytest.mark.slow, pytest.mark.consumer]
PACKAGES = ("docclassifier-docsaid==0.10.1", "capybara-docsaid<1", "PyTurboJPEG<2")
# capybara fetches a font when it is imported unless one lies where it looks; any TTF will do.
FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
LIBTURBOJPEG = Path("/usr/lib/x86_64-linux-gnu/libturbojpeg.so.0")

# Run inside the consumer's environment: register our ONNX file as the package documents for a
# custom model (an entry in Inference.configs, the file in its ckpt/ folder), then classify.
CLASSIFY = """
import json, shutil, sys
import capybara as cb
from docclassifier import DocClassifier
from docclassifier.margin_based import infer

model, size, threshold, register, *images = sys.argv[1:]
(infer.DIR / "ckpt").mkdir(exist_ok=True)
shutil.copyfile(model, infer.DIR / "ckpt" / "doctrain.onnx")
infer.Inference.configs["doctrain"] = {
    "model_path": "doctrain.onnx", "file_id": None, "img_size_infer": (int(size), int(size)),
    "threshold": float(threshold),
}
classifier = DocClassifier(model_cfg="doctrain", register_root=register)
answers = []
for path in images:
    label, score = classifier(cb.imread(path))
    feats = classifier.extract_feature(cb.imread(path))
    answers.append({"image": path, "label": label, "score": float(score), "feats": feats.tolist()})
print(json.dumps({"registered": sorted(classifier.bank), "answers": answers}))
"""


@pytest.fixture(scope="session")
def consumer_python() -> Path:
    missing = [p for p in (FONT, LIBTURBOJPEG) if not p.exists()]
    if missing:
        if os.geteuid() != 0:
            pytest.skip(f"the consumer needs {', '.join(map(str, missing))}; installing them needs root")
        apt_install("fonts-dejavu-core", "libturbojpeg0")
    # Kept between runs (it is a few hundred MB from PyPI), named by what it holds.
    pins = hashlib.sha256(" ".join(PACKAGES).encode()).hexdigest()[:12]
    root = Path.home() / ".cache" / "doctrain-tests" / f"consumer-{pins}"
    python = root / "bin" / "python"
    if python.exists():
        return python
    building = root.with_name(root.name + ".partial")
    shutil.rmtree(building, ignore_errors=True)
    venv.create(building, with_pip=True)
    installed = subprocess.run(
        [building / "bin" / "python", "-m", "pip", "install", "-q", *PACKAGES],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if installed.returncode != 0:
        pytest.skip(f"the consumer's packages cannot be installed here: {installed.stderr[-500:]}")
    site = subprocess.run(
        [building / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    shutil.copyfile(FONT, Path(site) / "capybara" / "vision" / "visualization" / "NotoSansMonoCJKtc-VF.ttf")
    building.rename(root)
    return python


def test_the_inference_package_loads_our_model_and_each_template_finds_itself(
    built, consumer_python, tmp_path
):
    """Before every metadata value was JSON, the package's ONNX engine refused to open our models."""
    from doctrain.classify import Classifier

    manifest = built / "data" / "synth" / "smoke" / "manifest.csv"
    rows = [line.split(",") for line in manifest.read_text().splitlines()[1:]]
    templates = {}
    for path, label, split, *_ in rows:  # one photographed copy per validation class
        if split == "val" and label not in templates:
            templates[label] = manifest.parent / path
    register = tmp_path / "register"
    register.mkdir()
    for label, path in templates.items():
        shutil.copyfile(path, register / f"{label}.png")
    registered = sorted(register.iterdir())

    model = built / TARGET
    said = _consume(consumer_python, model, 0.5, register, registered)
    assert said["registered"] == sorted(f"{label}" for label in templates)
    ours = Classifier(model)
    for path, answer in zip(registered, said["answers"], strict=True):
        assert answer["label"] == path.stem and answer["score"] > 0.9999, answer["image"]
        # The consumer's preprocessing is ours: the same embedding from the same file.
        np.testing.assert_allclose(answer["feats"], ours.embed(path), atol=1e-5)
    assert sys.executable != str(consumer_python)

    # At the threshold that travels with the model, the consumer rejects what `doctrain classify`
    # rejects and takes the rest for the same class (the smoke model is too weak to reject every
    # unknown: its embeddings differ in the fifth decimal), and the threshold rejects something.
    known = registered[: len(registered) // 2]
    unknown = [
        manifest.parent / path
        for path, label, split, *_ in rows
        if split == "val" and label not in {p.stem for p in known}
    ]
    ours = Classifier(model)
    ours.register(_folder_of(known, tmp_path / "known"))
    said = _consume(consumer_python, model, ours.threshold, tmp_path / "known", unknown)
    rejected = 0
    for path, answer in zip(unknown, said["answers"], strict=True):
        match = ours.classify(path, ours.threshold)
        assert answer["label"] == match.label, (path, answer, match)  # (None, 0.0) for a rejection
        rejected += match.label is None
    assert rejected > 0


def _folder_of(files: list[Path], folder: Path) -> Path:
    folder.mkdir()
    for file in files:
        shutil.copyfile(file, folder / file.name)
    return folder


def _consume(python: Path, model: Path, threshold: float, register: Path, images: list[Path]) -> dict:
    size = json.loads(model.with_suffix("").joinpath("cache/summary.json").read_text())["image_size"]
    result = subprocess.run(
        [python, "-c", CLASSIFY, model, str(size), str(threshold), register, *images],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
