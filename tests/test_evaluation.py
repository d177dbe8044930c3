"""Metrics of the shipped model: all pairs, bootstrap intervals over images, the shipped threshold."""

import numpy as np
import pandas as pd
import pytest

from doctrain import evaluation


def _clusters(classes: int, per_class: int, spread: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 16))
    labels = np.repeat(np.arange(classes), per_class)
    points = centres[labels] + spread * rng.normal(size=(len(labels), 16))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32), labels


def test_separable_classes_score_one_with_a_tight_interval():
    embeddings, labels = _clusters(6, 5, spread=0.01)
    figures = evaluation.split_metrics({"m": embeddings}, labels, resamples=200, seed=0, desc="test")["m"]
    assert figures["auroc"] == 1.0 and figures["auroc_95"] == pytest.approx([1.0, 1.0])
    assert figures["positive_pairs"] == 6 * 10 and figures["images"] == 30 and figures["classes"] == 6


def test_the_interval_holds_the_estimate_and_narrows_with_more_images():
    widths = []
    for per_class in (4, 40):
        embeddings, labels = _clusters(8, per_class, spread=1.2)
        figures = evaluation.split_metrics({"m": embeddings}, labels, resamples=300, seed=1, desc="test")["m"]
        low, high = figures["auroc_95"]
        assert low <= figures["auroc"] <= high
        widths.append(high - low)
    assert widths[1] < widths[0] / 2


def test_resampled_copies_of_one_image_are_never_paired():
    """A pair of an image with its own copy would be a free same-class pair scoring 1."""
    cosine = np.eye(3)
    scores, same = evaluation._pairs(cosine, np.array([0, 1, 2]), np.array([0, 0, 1, 1, 2]))
    assert len(scores) == 10 - 2 and not same.any()


def test_unresolvable_rates_get_no_interval():
    embeddings, labels = _clusters(3, 3, spread=0.5)  # 27 different-class pairs
    figures = evaluation.split_metrics({"m": embeddings}, labels, resamples=100, seed=0, desc="test")["m"]
    assert figures["at_fpr"]["0.001"]["resolvable"] is False and figures["at_fpr"]["0.001"]["tpr_95"] is None
    assert figures["at_fpr"]["0.1"]["tpr_95"] is not None


def test_the_shipped_threshold_is_strict_as_the_consumer_compares():
    scores, same = np.array([0.9, 0.8, 0.8, 0.3]), np.array([True, True, False, False])
    point = evaluation.at_threshold(scores, same, 0.8)
    assert point == {"threshold": 0.8, "fpr": 0.0, "tpr": 0.5}
    assert evaluation.at_threshold(scores, same, 0.5)["fpr"] == pytest.approx(0.5)


def test_a_model_beats_a_baseline_only_by_more_than_the_paired_interval():
    good, labels = _clusters(10, 6, spread=0.6, seed=2)
    noisy = good + np.random.default_rng(3).normal(scale=0.6, size=good.shape)
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    figures = evaluation.split_metrics({"model": good, "baseline": noisy}, labels, 300, seed=0, desc="test")
    clear = evaluation.compare(figures["model"], figures["baseline"])
    assert clear["auroc"]["beats"] and clear["auroc"]["difference"] > 0
    same = evaluation.compare(figures["model"], figures["model"])
    assert same["auroc"] == {"difference": 0.0, "difference_95": [0.0, 0.0], "beats": False}


def test_the_raw_pixel_baseline_is_mean_centred_unit_rows(tmp_path):
    from doctrain import cache

    images = np.zeros((3, 32, 32, 3), np.uint8)
    images[1, :16] = 255  # top half white
    images[2] = 255 - images[1]  # its negative
    np.save(tmp_path / "images.npy", images)
    index = pd.DataFrame(
        {"image": [0, 1, 2], "variant": 0, "class_id": [0, 1, 2], "label": list("abc"), "split": "val"}
    )
    index.to_parquet(tmp_path / "index.parquet")
    opened = cache.Cache(tmp_path)
    rows = np.stack([evaluation.raw_pixels(image) for image in opened.samples(opened.split("val"))])
    assert rows.shape == (3, evaluation.BASELINE_SIDE**2)
    np.testing.assert_allclose(
        rows[1:] @ rows[1:].T, [[1, -1], [-1, 1]], atol=1e-9
    )  # contrast, not brightness
    assert not rows[0].any()  # a flat image has no pattern to compare
