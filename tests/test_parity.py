"""The parity checks' own arithmetic (doctrain.parity); the checks on real exports are in
test_model_export and, through Snakemake, test_workflow."""

import numpy as np
import pytest
import torch

from doctrain.parity import derived_limits, top1_agreement


def test_top1_agreement_counts_swapped_neighbours():
    feats = torch.nn.functional.normalize(
        torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]]), dim=1
    )
    same = feats.numpy()
    swapped = same[[0, 2, 1, 3]]  # rows 1 and 2 trade places: their nearest neighbours change
    assert top1_agreement(same, same, tie=1e-6) == 1.0
    assert top1_agreement(same, swapped, tie=1e-6) < 1.0


def test_near_duplicate_images_trading_places_within_the_allowed_difference_still_agree():
    """Issue 26: two near-duplicates whose similarities to a third differ by 2e-5 trade places as
    its nearest neighbour, every value within max_abs_diff (1e-5) of PyTorch's; the former fixed tie
    of 1e-6 failed this honest export, the tie derived from max_abs_diff passes it."""

    def unit(x):
        return x / np.linalg.norm(x)

    rng = np.random.default_rng(0)
    base = unit(rng.normal(size=128))
    near = unit(base + 0.05 * rng.normal(size=128))
    nearer_not = unit(near + 8e-5 * (near - base))  # a hair further from base than `near`
    expected = np.stack([base, near, nearer_not, unit(rng.normal(size=128))]).astype(np.float32)
    got = expected[[0, 2, 1, 3]]
    assert np.abs(got - expected).max() <= 1e-5
    assert top1_agreement(expected, got, tie=1e-6) < 1.0
    limits = derived_limits(1e-5, 128)
    assert top1_agreement(expected, got, limits["top1_tie"]) == 1.0
    assert limits["max_norm_error"] == pytest.approx(1.13e-4, rel=1e-2)
