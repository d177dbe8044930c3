"""On-the-fly training augmentation, the reference recipe's list built with albumentations."""

from __future__ import annotations

import os
import random

import cv2
import numpy as np

# albumentations otherwise asks the network for a newer release at import time.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
import albumentations as A  # noqa: E402

# "Random border": the area uncovered by a shift or rotation is filled one of these ways.
_BORDERS = (cv2.BORDER_CONSTANT, cv2.BORDER_REFLECT_101, cv2.BORDER_REPLICATE)


def build(settings: dict) -> A.Compose | None:
    """The augmentation pipeline for `augment` settings (None when switched off).

    Works on uint8 BGR [H, W, 3]; the colour transforms treat channels symmetrically except hue,
    whose jitter is random anyway."""
    if not settings["enabled"]:
        return None
    geometric = A.OneOf(
        [
            A.Affine(
                scale=(0.9, 1.1),
                translate_percent=(-0.0625, 0.0625),
                rotate=(-15, 15),
                border_mode=mode,
                p=1.0,
            )
            for mode in _BORDERS
        ],
        p=settings["shift_scale_rotate_p"],
    )
    degradation = A.OneOf(
        [
            A.GaussNoise(std_range=(0.02, 0.1), p=1.0),
            A.GaussianBlur(blur_limit=(3, 5), p=1.0),
            A.MotionBlur(blur_limit=(3, 7), p=1.0),
            A.Defocus(radius=(1, 3), p=1.0),
            A.Spatter(mode="rain", p=1.0),
            A.Spatter(mode="mud", p=1.0),
            A.CoarseDropout(
                num_holes_range=(1, 4),
                hole_height_range=(0.05, 0.2),
                hole_width_range=(0.05, 0.2),
                fill="random",
                p=1.0,
            ),
        ],
        p=settings["degradation_p"],
    )
    colour = A.OneOf(
        [A.Equalize(p=1.0), A.ColorJitter(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.05, p=1.0)],
        p=settings["colour_p"],
    )
    return A.Compose([geometric, degradation, colour])


def seeded(pipeline: A.Compose, seed: int) -> A.Compose:
    """`pipeline` set to draw one sample's augmentation from `seed`: one numpy and one Python
    generator, shared down the pipeline, so each block draws in turn and fires at its own p,
    independently of the others. (albumentations' `set_random_seed` gives every block a generator
    of the same seed: the blocks then make the same first draw, and fire together or not at all.)"""
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
    return pipeline
