"""The augmentation blocks fire at their configured probabilities, independently of each other,
through the seeding each training sample gets (augment.seeded with the sampler's per-sample seeds)."""

from __future__ import annotations

import albumentations as A
import numpy as np

from doctrain import augment
from doctrain.dataset import ClassBalancedSampler

SAMPLES = 1500


def test_each_block_fires_at_its_own_rate_and_independently_of_the_others():
    p = {"shift_scale_rotate_p": 0.5, "degradation_p": 0.5, "colour_p": 0.3}  # the demo's
    pipeline = augment.build({"enabled": True, **p})
    # The same blocks, recording which transforms each sample got.
    recording = A.Compose(pipeline.transforms, save_applied_params=True)
    members = [{type(t).__name__ for t in block.transforms} for block in pipeline.transforms]
    image = np.random.default_rng(0).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    fired = np.zeros((SAMPLES, len(members)), dtype=bool)
    for n, (_, seed) in enumerate(ClassBalancedSampler(np.arange(4), SAMPLES, seed=42)):
        applied = {name for name, _ in augment.seeded(recording, seed)(image=image)["applied_transforms"]}
        fired[n] = [bool(applied & names) for names in members]
    rates = fired.mean(axis=0)
    print("rates", rates, "all three together", fired.all(axis=1).mean())
    assert np.all(np.abs(rates - list(p.values())) < 0.06), rates
    correlation = np.corrcoef(fired.T)[np.triu_indices(len(members), k=1)]
    print("pairwise correlation", correlation)
    assert np.all(np.abs(correlation) < 0.1), correlation
