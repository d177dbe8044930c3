import math

import numpy as np
import pytest
import torch

from doctrain.lit_module import warmup_then_decay
from doctrain.losses import MarginSoftmax
from doctrain.metrics import pair_scores, verification_metrics


def _head(kind: str) -> MarginSoftmax:
    head = MarginSoftmax(num_classes=2, embed_dim=2, kind=kind, s=2.0, m=0.5)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[3.0, 0.0], [0.0, 0.5]]))  # normalised to the unit axes
    return head


def test_cosface_by_hand():
    # cos = [0.6, 0.8] for emb (3, 4)/5; target class 1: 0.8 - 0.5 = 0.3; logits = 2 * [0.6, 0.3]
    loss = _head("cosface")(torch.tensor([[3.0, 4.0]]), torch.tensor([1]))
    expected = -math.log(math.exp(0.6) / (math.exp(1.2) + math.exp(0.6)))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_arcface_by_hand():
    # target logit = cos(acos(0.8) + 0.5) = 0.8 cos 0.5 - 0.6 sin 0.5
    loss = _head("arcface")(torch.tensor([[3.0, 4.0]]), torch.tensor([1]))
    target = 0.8 * math.cos(0.5) - 0.6 * math.sin(0.5)
    expected = -math.log(math.exp(2 * target) / (math.exp(1.2) + math.exp(2 * target)))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_margin_only_touches_the_target_logit():
    head = _head("cosface")
    logits = head.logits(torch.tensor([[3.0, 4.0], [3.0, 4.0]]), torch.tensor([0, 1]))
    assert torch.allclose(logits, torch.tensor([[2 * 0.1, 2 * 0.8], [2 * 0.6, 2 * 0.3]]))


def test_arcface_gradient_is_finite_at_cos_one():
    head = _head("arcface")
    emb = torch.tensor([[1.0, 0.0]], requires_grad=True)
    head(emb, torch.tensor([0])).backward()
    assert torch.isfinite(emb.grad).all()


def test_pair_scores_cover_each_unordered_pair_once():
    emb = np.array([[1, 0], [1, 0], [0, 1]], dtype=np.float32)
    scores, same = pair_scores(emb, np.array([5, 5, 7]))
    assert scores.tolist() == [1.0, 0.5, 0.5]
    assert same.tolist() == [True, False, False]


def test_verification_metrics_on_a_separable_set():
    scores = np.array([0.9, 0.8, 0.3, 0.2, 0.1])
    same = np.array([True, True, False, False, False])
    metrics = verification_metrics(scores, same)
    assert metrics["auroc"] == 1.0
    assert metrics["at_fpr"]["0.1"]["tpr"] == 1.0
    assert metrics["at_fpr"]["0.1"]["threshold"] == pytest.approx(0.8)
    assert metrics["at_fpr"]["0.0001"]["resolvable"] is False  # 3 negatives resolve FPR >= 1/3 only


def test_schedule_warms_up_then_decays_linearly_to_zero():
    factors = [warmup_then_decay(s, total_steps=100, warmup_steps=10, power=1.0) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[55] == pytest.approx(0.5)
    assert warmup_then_decay(100, 100, 10, 1.0) == 0.0


def test_operating_point_falls_back_to_the_smallest_resolvable_fpr():
    from doctrain.operating_point import SELECTION_PAIRS, describe_operating_point, operating_point

    figures = {
        "at_fpr": {
            "0.0001": {"tpr": 0.1, "threshold": 0.99, "resolvable": False},
            "0.001": {"tpr": 0.2, "threshold": 0.95, "resolvable": False},
            "0.01": {"tpr": 0.5, "threshold": 0.9, "resolvable": True},
            "0.1": {"tpr": 0.9, "threshold": 0.8, "resolvable": True},
        }
    }
    pairs = "90 calibration pairs"
    assert operating_point(figures, 1e-3, pairs) == {
        "fpr": 0.01,
        "requested_fpr": 1e-3,
        "tpr": 0.5,
        "threshold": 0.9,
        "resolvable": True,
        "chosen_on": pairs,
    }
    assert "not at the requested FPR 0.001, which these pairs cannot resolve" in (
        describe_operating_point(operating_point(figures, 1e-3, pairs))
    )
    assert operating_point(figures, 0.1, pairs)["threshold"] == 0.8
    assert describe_operating_point(operating_point(figures, 0.1, pairs)) == (
        "operating threshold 0.8000 at FPR 0.1 (TPR there 0.900), chosen on 90 calibration pairs"
    )
    earlier = operating_point(figures, 0.1, pairs)
    del earlier["chosen_on"]  # a model exported before thresholds were calibrated
    assert describe_operating_point(earlier).endswith(f"chosen on {SELECTION_PAIRS}")
    for entry in figures["at_fpr"].values():
        entry["resolvable"] = False
    assert operating_point(figures, 1e-3, pairs)["fpr"] == 0.1
    assert "rough guess" in describe_operating_point(operating_point(figures, 1e-3, pairs))


def test_the_schema_offers_exactly_the_registered_margins():
    from doctrain.config import load_schema
    from doctrain.losses import MARGINS

    assert set(load_schema()["properties"]["loss"]["properties"]["name"]["enum"]) == set(MARGINS)
