"""Metrics of what ships: the published ONNX file, run by onnxruntime as the consumer runs it, on
every pair of each held-out split's images — validation (selected the checkpoint), calibration
(chose the shipped threshold) and test (used for neither: the figures to quote) where the manifest
has them — each figure with a 95 % bootstrap interval, and what the shipped threshold accepts there.

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
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
from tqdm import tqdm

from doctrain import _io, images, plots
from doctrain.cache import Cache
from doctrain.metrics import FPR_TARGETS, roc_points, verification_metrics
from doctrain.onnx_model import read_metadata, session
from doctrain.operating_point import describe_operating_point

BATCH = 64
BASELINE_SIDE = 12


def onnx_embedder(sess: ort.InferenceSession, meta: dict) -> Callable[[np.ndarray], np.ndarray]:
    """The ONNX file as a function from model inputs [B, 3, H, W] to its embeddings [B, D]."""
    input_name, output_name = meta["input"]["name"], meta["output"]["name"]
    return lambda inputs: sess.run([output_name], {input_name: inputs})[0]


def embed_split(embed: Callable[[np.ndarray], np.ndarray], cache: Cache, split: str) -> dict[str, np.ndarray]:
    """A split's labels [N], its embeddings [N, D] by `embed` (the shipped ONNX file in the
    pipeline), and the raw-pixel baseline's [N, side²] — the baseline a trained model has to beat:
    each image as a grey side × side thumbnail, its mean subtracted, as a unit row (cosine of raw
    pixels, no learning). Images are read once, a batch at a time."""
    embeddings, thumbs = [], []
    for batch in cache.batches(split, BATCH):
        embeddings.append(embed(images.to_input(batch)))
        thumbs += [raw_pixels(image) for image in batch]
    return {
        "labels": cache.split(split)["label"].to_numpy(),
        "model": np.concatenate(embeddings),
        "baseline": np.stack(thumbs),
    }


def raw_pixels(image: np.ndarray, side: int = BASELINE_SIDE) -> np.ndarray:
    """One uint8 BGR image as the baseline's unit row: grey, side × side, mean-centred."""
    thumb = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (side, side), interpolation=cv2.INTER_AREA)
    centred = thumb.reshape(-1).astype(np.float64) - thumb.mean()
    return centred / max(np.linalg.norm(centred), 1e-12)


def _pairs(cosine: np.ndarray, labels: np.ndarray, picked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores and same-class flags of every pair of `picked` images that are not one image twice."""
    first, second = np.triu_indices(len(picked), k=1)
    a, b = picked[first], picked[second]
    keep = a != b
    a, b = a[keep], b[keep]
    return (cosine[a, b] + 1) / 2, labels[a] == labels[b]


def _interval(values: list[float]) -> list[float] | None:
    return [float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))] if values else None


SHIPPED = ("fpr@shipped", "tpr@shipped")


def split_metrics(
    embeddings: dict[str, np.ndarray],
    labels: np.ndarray,
    resamples: int,
    seed: int,
    desc: str,
    thresholds: dict[str, float] | None = None,
) -> dict[str, dict]:
    """Per embedding (name -> [N, D] unit rows): all-pairs AUROC and TPR at each FPR target, and,
    where `thresholds` gives the embedding one, the FPR and TPR at that threshold, each with its
    bootstrap interval. Every embedding is scored on the same resampled images, so the difference
    between two of them (`compare`) has an interval of its own."""
    thresholds = thresholds or {}
    cosines = {name: e @ e.T for name, e in embeddings.items()}
    everything = np.arange(len(labels))
    figures = {}
    for name, cosine in cosines.items():
        scores, same = _pairs(cosine, labels, everything)
        figures[name] = verification_metrics(scores, same)
        figures[name].update(
            images=len(labels),
            classes=int(len(np.unique(labels))),
            roc=roc_points(scores, same),
            scores=scores,
            same=same,
            draws={"auroc": [], **{f"tpr@{t:g}": [] for t in FPR_TARGETS}, **{key: [] for key in SHIPPED}},
        )
        if name in thresholds:
            figures[name]["at_shipped_threshold"] = at_threshold(scores, same, thresholds[name])
    rng = np.random.default_rng(seed)
    for _ in tqdm(range(resamples), desc=f"evaluate: {desc} bootstrap", unit="resample", mininterval=2):
        picked = rng.integers(0, len(labels), len(labels))
        for name, cosine in cosines.items():
            s, y = _pairs(cosine, labels, picked)
            if y.all() or not y.any():
                break  # this resample holds one class only: no figure, for any embedding
            again = verification_metrics(s, y)
            draws = figures[name]["draws"]
            draws["auroc"].append(again["auroc"])
            for target, entry in again["at_fpr"].items():
                draws[f"tpr@{target}"].append(entry["tpr"])
            if name in thresholds:
                shipped = at_threshold(s, y, thresholds[name])
                draws["fpr@shipped"].append(shipped["fpr"])
                draws["tpr@shipped"].append(shipped["tpr"])
    for fig in figures.values():
        fig["auroc_95"] = _interval(fig["draws"]["auroc"])
        for target, entry in fig["at_fpr"].items():
            entry["tpr_95"] = _interval(fig["draws"][f"tpr@{target}"]) if entry["resolvable"] else None
        if "at_shipped_threshold" in fig:
            fig["at_shipped_threshold"]["fpr_95"] = _interval(fig["draws"]["fpr@shipped"])
            fig["at_shipped_threshold"]["tpr_95"] = _interval(fig["draws"]["tpr@shipped"])
    return figures


def compare(model: dict, baseline: dict) -> dict:
    """Model minus baseline on AUROC and (where resolvable) on TPR at FPR 1e-2, each with the
    interval of the paired differences; `beats` is true when the whole interval lies above zero."""
    points = {"auroc": (model["auroc"], baseline["auroc"])}
    if model["at_fpr"]["0.01"]["resolvable"]:
        points["tpr@0.01"] = (model["at_fpr"]["0.01"]["tpr"], baseline["at_fpr"]["0.01"]["tpr"])
    out = {}
    for figure, (ours, theirs) in points.items():
        low_high = _interval(list(np.subtract(model["draws"][figure], baseline["draws"][figure])))
        out[figure] = {
            "difference": ours - theirs,
            "difference_95": low_high,
            "beats": bool(low_high and low_high[0] > 0),
        }
    return out


def at_threshold(scores: np.ndarray, same: np.ndarray, threshold: float) -> dict:
    """What a threshold does on these pairs: the share of different-class pairs it accepts (the
    FPR: unknown documents taken for a template) and of same-class pairs (the TPR)."""
    accepted = scores > threshold  # strict, as the consumer compares
    return {
        "threshold": threshold,
        "fpr": float(accepted[~same].mean()),
        "tpr": float(accepted[same].mean()),
    }


# What each held-out split is for: which of its figures were free to favour the model.
ROLES = {
    "val": "selected the checkpoint",
    "calibration": "chose the shipped threshold",
    "test": "used for neither: the figures to quote",
}
BASELINE_WHAT = f"cosine of mean-centred grey {BASELINE_SIDE}x{BASELINE_SIDE} thumbnails (no learning)"


def _baseline_line(split: str, baseline: dict, comparison: dict) -> str:
    """Whether the model beats raw pixels by more than the interval, on every compared figure."""
    parts = [
        f"{figure} {c['difference']:+.3f} [{c['difference_95'][0]:+.3f}, {c['difference_95'][1]:+.3f}]"
        for figure, c in comparison.items()
        if c["difference_95"]
    ]
    tpr = baseline["at_fpr"]["0.01"]
    figures = f"AUROC {baseline['auroc']:.3f}" + (
        f", TPR {tpr['tpr']:.3f} at FPR 0.01" if tpr["resolvable"] else ""
    )
    if all(c["beats"] for c in comparison.values()):
        opening = f"{split}: the model beats the raw-pixel baseline ({figures})"
    else:
        opening = f"warning: {split}: the model does not clearly beat the raw-pixel baseline ({figures})"
    return f"{opening}; model minus baseline, 95 % interval: {', '.join(parts)}"


def _percent_range(pair: list[float] | None) -> str:
    return f" [{pair[0]:.2%}, {pair[1]:.2%}]" if pair else ""


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
    meta, sess = read_metadata(model), session(model)
    shipped = meta.get("operating_point", {})
    splits = [s for s in ROLES if len(opened.split(s))]
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
        embedded = embed_split(onnx_embedder(sess, meta), opened, split)
        both = split_metrics(
            {"model": embedded["model"], "baseline": embedded["baseline"]},
            embedded["labels"],
            options["bootstrap_resamples"],
            options["seed"],
            split,
            {"model": shipped["threshold"]} if "threshold" in shipped else None,
        )
        figures, baseline = both["model"], both["baseline"]
        comparison = compare(figures, baseline)
        for fig in both.values():
            for key in ("scores", "same", "draws"):
                fig.pop(key)
        for key in ("images", "classes"):
            baseline.pop(key)
        figures = {"role": ROLES[split], **figures}
        figures["baseline"] = {"what": BASELINE_WHAT, **baseline}
        figures["against_baseline"] = comparison
        curves[f"{split}, all pairs"] = (figures["roc"], figures)
        curves[f"{split}, raw-pixel baseline"] = (baseline["roc"], baseline)
        record[split] = figures
        print(_line(split, figures))
        print(_baseline_line(split, figures["baseline"], comparison))
    train_val = json.loads(Path(metrics).read_text())["val"]
    record["within_batch_val"] = {
        "what": "the reference recipe's figure: PyTorch checkpoint, pairs within each validation batch",
        "auroc": train_val["auroc"],
        "at_fpr": {t: e["tpr"] for t, e in train_val["at_fpr"].items()},
    }
    print(f"within-batch validation (the recipe's figure, from training): AUROC {train_val['auroc']:.3f}")
    if "threshold" in shipped:
        print(f"shipped {describe_operating_point(shipped)}")
        for split in splits:
            point = record[split]["at_shipped_threshold"]
            print(
                f"{split} ({ROLES[split]}) at the shipped threshold {point['threshold']:.4f}: accepts "
                f"{point['fpr']:.2%}{_percent_range(point['fpr_95'])} of different-class pairs (FPR "
                f"{shipped['fpr']:g} requested) and {point['tpr']:.2%}{_percent_range(point['tpr_95'])} "
                "of same-class pairs"
            )
    plots.roc_curves(curves, f"{name} (shipped ONNX)", roc_png)
    _io.write_stamp(report, record, [roc_png])
