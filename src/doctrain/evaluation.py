"""Metrics of what ships: the published ONNX file, run by onnxruntime as the consumer runs it, on
every pair of validation images (and of test images, when the manifest has a test split), each
figure with a 95 % bootstrap interval.

The training metrics (metrics.json) are the reference recipe's: the PyTorch checkpoint, pairs
within each validation batch only, on the split that also selected the checkpoint. They stay, as a
second, labelled figure, so runs remain comparable with the recipe's published table.

Intervals: the images of a split are resampled with replacement and every pair among the resampled
images is scored again (a pair of an image with its own copy is left out), so the pairs' shared
images widen the interval as they should; resampling pairs one by one would pretend they are
independent. Classes are not resampled: the interval says how sure the figure is for these
classes, not for classes never seen.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm import tqdm

from doctrain import _io, images, plots
from doctrain.cache import Cache
from doctrain.metrics import FPR_TARGETS, roc_points, verification_metrics
from doctrain.onnx_model import read_metadata, session

BATCH = 64


def embed_split(model: str | Path, cache: Cache, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings [N, D] of a split's images by the ONNX file, and their labels [N]."""
    meta = read_metadata(model)
    input_name, output_name = meta["input"]["name"], meta["output"]["name"]
    sess = session(model)
    rows = cache.split(split)
    chunks = []
    for start in range(0, len(rows), BATCH):
        part = rows.iloc[start : start + BATCH]
        batch = np.stack([cache.sample(int(r.image), int(r.variant)) for r in part.itertuples()])
        chunks.append(sess.run([output_name], {input_name: images.to_input(batch)})[0])
    return np.concatenate(chunks), rows["label"].to_numpy()


def _pairs(cosine: np.ndarray, labels: np.ndarray, picked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores and same-class flags of every pair of `picked` images that are not one image twice."""
    first, second = np.triu_indices(len(picked), k=1)
    a, b = picked[first], picked[second]
    keep = a != b
    a, b = a[keep], b[keep]
    return (cosine[a, b] + 1) / 2, labels[a] == labels[b]


def _interval(values: list[float]) -> list[float] | None:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values else None


def split_metrics(embeddings: np.ndarray, labels: np.ndarray, resamples: int, seed: int, desc: str) -> dict:
    """All-pairs AUROC and TPR at each FPR target, each with its bootstrap interval, and the share
    of pairs at each threshold."""
    cosine = embeddings @ embeddings.T
    everything = np.arange(len(labels))
    scores, same = _pairs(cosine, labels, everything)
    figures = verification_metrics(scores, same)
    figures.update(images=len(labels), classes=int(len(np.unique(labels))))
    rng = np.random.default_rng(seed)
    aurocs: list[float] = []
    tprs: dict[str, list[float]] = {f"{t:g}": [] for t in FPR_TARGETS}
    for _ in tqdm(range(resamples), desc=f"evaluate: {desc} bootstrap", unit="resample", mininterval=2):
        s, y = _pairs(cosine, labels, rng.integers(0, len(labels), len(labels)))
        if y.all() or not y.any():
            continue
        again = verification_metrics(s, y)
        aurocs.append(again["auroc"])
        for target, entry in again["at_fpr"].items():
            tprs[target].append(entry["tpr"])
    figures["auroc_95"] = _interval(aurocs)
    for target, entry in figures["at_fpr"].items():
        entry["tpr_95"] = _interval(tprs[target]) if entry["resolvable"] else None
    figures["roc"] = roc_points(scores, same)
    figures["scores"], figures["same"] = scores, same
    return figures


def at_threshold(scores: np.ndarray, same: np.ndarray, threshold: float) -> dict:
    """What a threshold does on these pairs: the share of different-class pairs it accepts (the
    FPR: unknown documents taken for a template) and of same-class pairs (the TPR)."""
    accepted = scores > threshold  # strict, as the consumer compares
    return {
        "threshold": threshold,
        "fpr": float(accepted[~same].mean()),
        "tpr": float(accepted[same].mean()),
    }


def _line(split: str, figures: dict) -> str:
    def rng(pair: list[float] | None) -> str:
        return f" [{pair[0]:.3f}, {pair[1]:.3f}]" if pair else ""

    parts = [
        f"TPR {e['tpr']:.3f}{rng(e['tpr_95'])} at FPR {t}"
        if e["resolvable"]
        else f"FPR {t} not resolvable ({figures['negative_pairs']:,} different-class pairs)"
        for t, e in figures["at_fpr"].items()
    ]
    return (
        f"{split}: {figures['images']} images of {figures['classes']} classes, "
        f"{figures['positive_pairs']:,} same-class and {figures['negative_pairs']:,} different-class pairs: "
        f"AUROC {figures['auroc']:.3f}{rng(figures['auroc_95'])}; " + "; ".join(parts)
    )


def run_stage(
    settings: dict,
    model: str | Path,
    cache: str | Path,
    metrics: str | Path,
    roc_png: str | Path,
    report: str | Path,
    name: str,
) -> None:
    """Evaluate the published model; write the report (the stage's stamp) and the ROC plot."""
    options = settings["evaluation"]
    opened = Cache(Path(cache).parent)
    shipped = read_metadata(model).get("operating_point", {})
    splits = [s for s in ("val", "test") if len(opened.split(s))]
    record: dict = {
        "model": {"path": str(model), "sha256": _io.sha256_file(model)},
        "method": (
            "the ONNX file through onnxruntime (CPU); every pair of a split's images scored "
            "(cos + 1) / 2; 95 % intervals: percentile bootstrap over images, "
            f"{options['bootstrap_resamples']} resamples, seed {options['seed']}"
        ),
    }
    curves = {}
    for split in splits:
        embeddings, labels = embed_split(model, opened, split)
        figures = split_metrics(embeddings, labels, options["bootstrap_resamples"], options["seed"], split)
        scores, same = figures.pop("scores"), figures.pop("same")
        if "threshold" in shipped:
            figures["at_shipped_threshold"] = at_threshold(scores, same, shipped["threshold"])
        curves[f"{split}, all pairs"] = (figures["roc"], figures)
        record[split] = figures
        print(_line(split, figures))
    train_val = json.loads(Path(metrics).read_text())["val"]
    record["within_batch_val"] = {
        "what": "the reference recipe's figure: PyTorch checkpoint, pairs within each validation batch",
        "auroc": train_val["auroc"],
        "at_fpr": {t: e["tpr"] for t, e in train_val["at_fpr"].items()},
    }
    print(f"within-batch validation (the recipe's figure, from training): AUROC {train_val['auroc']:.3f}")
    if "threshold" in shipped:
        for split in splits:
            point = record[split]["at_shipped_threshold"]
            print(
                f"{split} at the shipped threshold {point['threshold']:.4f}: accepts "
                f"{point['fpr']:.2%} of different-class pairs and {point['tpr']:.2%} of same-class pairs"
            )
    plots.roc_curves(curves, f"{name} (shipped ONNX)", roc_png)
    _io.write_stamp(report, record, [roc_png])
