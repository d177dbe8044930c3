"""The consumer's input contract in one place: BGR, plain bilinear resize to H x W, float32 NCHW / 255.

The cache, the validation stage, the parity check and `doctrain classify` all go through these
functions, so training and inference cannot drift apart."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:  # the inference path (onnxruntime) does not import torch
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
# Validation applies its own limit (data.max_image_pixels) from the header; Pillow's fixed one would
# refuse sizes a user allowed, and Pillow only ever reads headers here.
Image.MAX_IMAGE_PIXELS = None


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the encoded image's header without decoding it; None when not an image."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.size
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def decode_bgr(data: bytes) -> np.ndarray | None:
    """Decode encoded image bytes to uint8 BGR [H, W, 3]; None when they are not an image."""
    try:
        array = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        return None
    return array if array is not None and array.size else None


def read_bgr(path: str | Path) -> np.ndarray:
    image = decode_bgr(Path(path).read_bytes())
    if image is None:
        raise ValueError(f"{path} is not a decodable image")
    return image


def resize(image: np.ndarray, size: int) -> np.ndarray:
    """Plain bilinear resize to size x size; the aspect ratio is not kept (as the consumer does)."""
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)


def to_input(images: np.ndarray) -> np.ndarray:
    """uint8 BGR [N, H, W, 3] (or one [H, W, 3]) -> float32 [N, 3, H, W] in [0, 1]."""
    if images.ndim == 3:
        images = images[None]
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def tensor_input(batch: torch.Tensor) -> torch.Tensor:
    """to_input for a torch batch where it lies (the GPU after transfer): uint8 BGR [N, H, W, 3]
    -> float32 [N, 3, H, W] in [0, 1]; the same division, so the same floats. Converted and
    transposed by one copy into the result, divided in place: the permuted uint8 made contiguous,
    then a float copy, then a quotient took 10x longer on a CPU (1.3 ms for a demo batch of 16)."""
    import torch

    n, height, width, channels = batch.shape
    floats = torch.empty((n, channels, height, width), dtype=torch.float32, device=batch.device)
    return floats.copy_(batch.permute(0, 3, 1, 2)).div_(255.0)


def load_input(path: str | Path, size: int) -> np.ndarray:
    """One image file as the network's float32 [1, 3, size, size] input."""
    return to_input(resize(read_bgr(path), size))
