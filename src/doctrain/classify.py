"""Using an exported model as the inference package does: register template images, then match
query images to the best template by (cos + 1) / 2 above a threshold."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from doctrain import images
from doctrain.errors import UserError
from doctrain.onnx_model import read_metadata, session

# The 96-px reference models shipped with about this threshold; for models without their own.
FALLBACK_THRESHOLD = 0.7


@dataclass
class Match:
    image: str
    label: str | None  # None when no template scores above the threshold
    score: float
    nearest: str  # the best-scoring template, accepted or not


class Classifier:
    def __init__(self, model_path: str | Path):
        meta = read_metadata(model_path)
        if "input" not in meta:
            raise UserError(f"{model_path} carries no doctrain metadata (was it exported by doctrain?)")
        self.session = session(model_path)
        self.input_name, self.output_name = meta["input"]["name"], meta["output"]["name"]
        self.size = meta["preprocessing"]["height"]
        self.operating_point: dict = meta.get("operating_point", {})
        self.threshold = self.operating_point.get("threshold", FALLBACK_THRESHOLD)
        self.labels: list[str] = []
        self.bank = np.zeros((0, meta["embedding_dim"]), dtype=np.float32)

    def embed(self, path: str | Path) -> np.ndarray:
        try:
            tensor = images.load_input(path, self.size)
        except (OSError, ValueError) as exc:
            raise UserError(str(exc)) from None
        return self.session.run([self.output_name], {self.input_name: tensor})[0][0]

    def register(self, folder: str | Path) -> None:
        """Each image in `folder` is one template, named by its file stem (or its sub-folder)."""
        folder = Path(folder)
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in images.IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"{folder} holds no template images")
        for file in files:
            self.labels.append(file.parent.name if file.parent != folder else file.stem)
        self.bank = np.stack([self.embed(f) for f in files])

    def classify(self, path: str | Path, threshold: float) -> Match:
        scores = (self.bank @ self.embed(path) + 1) / 2
        best = int(scores.argmax())
        label = self.labels[best] if scores[best] > threshold else None  # strict, as the package does
        return Match(str(path), label, float(scores[best]), self.labels[best])
