"""Training augmentation, the reference recipe's list, in two halves.

`draw` picks a batch's parameters on the CPU, each sample's from its own seed alone (in the loader
worker, so a run is a function of its seed whatever the device, rank slicing or worker count), and
`to_batch` packs them; `apply` runs them wherever the batch is — the GPU after transfer, or the CPU —
on whole batches, with plain torch. One implementation for both.

The blocks and their ranges (albumentations 2.0 defaults where the recipe names none):
  geometric    affine: scale 0.9-1.1 per axis, shift +-6.25 % per axis, rotation +-15 deg, about
               the centre, the uncovered border constant (black), reflected or replicated;
  degradation  one of: Gaussian noise (std 0.02-0.1), Gaussian blur (3 or 5 px, sigma 0.5-3),
               motion blur (3-7 px, any angle, direction -1..1, shifted), defocus (radius 1-3,
               alias blur 0.1-0.5), spatter rain, spatter mud, coarse dropout (1-4 holes, 5-20 %
               of each side, random fill);
  colour       one of: histogram equalisation per channel, colour jitter (brightness, contrast,
               saturation 0.7-1.3, hue +-0.05 of the circle, applied in a random order).
Each block fires independently at its configured p. Where this differs from the albumentations
path it replaced: pixels are BGR floats in [0, 1] throughout (no rounding to uint8 after each
block); the hue turns in YIQ, not HSV; rain drops are shaded by an emboss of the blurred liquid
layer, not by Canny edges and a distance transform; the reflected border mirrors about the edge
pixel (OpenCV's REFLECT_101, as before).
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from doctrain import images

BORDERS = ("constant", "reflect", "replicate")
_PADDING = {"constant": "zeros", "reflect": "reflection", "replicate": "border"}
DEGRADATIONS = ("noise", "gaussian_blur", "motion_blur", "defocus", "rain", "mud", "dropout")
COLOURS = ("equalize", "jitter")
JITTERS = ("brightness", "contrast", "saturation", "hue")
KERNEL_SIZE = 9  # every blur kernel fits: Gaussian <= 5, motion <= 7, defocus radius 3 + its 3 x 3 alias blur
MAX_HOLES = 4
NONE = -1
# Spatter, albumentations' constants: liquid layer ~ N(0.65, 0.3) blurred at sigma 2, cut below 0.68.
_LIQUID_MEAN, _LIQUID_STD, _LIQUID_SIGMA, _LIQUID_CUT, _SPATTER_INTENSITY = 0.65, 0.3, 2.0, 0.68, 0.6
_RAIN_COLOUR, _MUD_COLOUR = np.array([238, 238, 175]), np.array([20, 42, 63])  # to the channels in this order


# Constants stay numpy: a torch operation at import would fix torch's CPU kernels before the training
# pins them (trainer.cpu_kernels).
def _gaussian(sigma: float, size: int) -> np.ndarray:
    line = cv2.getGaussianKernel(size, sigma)
    return (line @ line.T)[None]


_LIQUID_BLUR = _gaussian(_LIQUID_SIGMA, 2 * round(3 * _LIQUID_SIGMA) + 1)
_EMBOSS = np.array([[[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]]])
_DROP_BLUR = _gaussian(1.5, 5)
_GREY = np.array([0.114, 0.587, 0.299])  # luma weights of B, G, R


def draw(settings: dict, seeds: np.ndarray, size: int) -> dict[str, np.ndarray]:
    """The parameters of a batch for the `augment` settings, a row per sample from its seed alone.
    Every sample draws the same numbers in the same order whether a block fires or not, so the
    blocks are independent and a setting changes only what it names. Each sample's generator makes
    its few calls; what they become is computed for the whole batch."""
    n = len(seeds)
    fire, choices = np.empty((n, 3)), np.empty((n, 3), dtype=np.int64)
    numbers, pixel_seeds, jitter = np.empty((n, _NUMBERS)), np.empty(n, dtype=np.int64), np.empty((n, 4))
    orders = np.empty((n, len(JITTERS)), dtype=np.int64)
    for i, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        fire[i] = rng.random(3)
        choices[i] = rng.integers(len(BORDERS)), rng.integers(len(DEGRADATIONS)), rng.integers(len(COLOURS))
        numbers[i] = rng.random(_NUMBERS)
        pixel_seeds[i] = rng.integers(2**31 - 1)
        jitter[i] = rng.random(4)
        orders[i] = rng.permutation(len(JITTERS))
    p = [settings["shift_scale_rotate_p"], settings["degradation_p"], settings["colour_p"]]
    fires = (fire < p) & settings["enabled"]
    chosen = np.where(fires, choices, NONE)
    geometry, blurs, holes, noise = np.split(numbers, np.cumsum([len(low) for low, _ in _RANGES[:3]]), axis=1)
    return {
        "border": chosen[:, 0],
        "affine": _affine_matrices(_in_range(geometry, *_RANGES[0]), size),
        "degradation": chosen[:, 1],
        "noise_std": _in_range(noise[:, 0], *_NOISE_STD).astype(np.float32),
        "kernel": np.stack(
            [
                _blur_kernel(_kind(k), row)
                for k, row in zip(chosen[:, 1], _in_range(blurs, *_RANGES[1]), strict=True)
            ]
        ),
        "holes": _holes(holes.reshape(n, 5, MAX_HOLES), size),
        "pixel_seed": pixel_seeds,
        "colour": chosen[:, 2],
        "jitter": _in_range(jitter, *_JITTER).astype(np.float32),
        "jitter_order": orders,
    }


# What each sample's uniform numbers become, (low, high) per number: numpy's uniform(low, high) is
# low + (high - low) * random(), so these are the values its calls drew (tested against them).
_RANGES = (
    ([0.9, 0.9, -0.0625, -0.0625, -15], [1.1, 1.1, 0.0625, 0.0625, 15]),  # scale x, y, shift x, y, degrees
    ([0, 0.5, 0, 0, -1, -1, -1, 1, 0.1], [2, 3, 3, 360, 1, 1, 1, 4, 0.5]),  # see _blur_kernel
    ([0] * 5 * MAX_HOLES, [1] * 5 * MAX_HOLES),  # see _holes
)
_NOISE_STD = (0.02, 0.1)
_JITTER = ([0.7, 0.7, 0.7, -0.05], [1.3, 1.3, 1.3, 0.05])  # brightness, contrast, saturation, hue
_NUMBERS = sum(len(low) for low, _ in _RANGES) + 1  # and the noise's deviation


def _in_range(uniform: np.ndarray, low, high) -> np.ndarray:
    low, high = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    return low + (high - low) * uniform


def _kind(degradation: int) -> str | None:
    return None if degradation == NONE else DEGRADATIONS[degradation]


def selections(codes: dict) -> dict:
    """Which samples each transform takes (name -> bool per sample), from the drawn codes."""
    chosen = {
        **{name: codes["border"] == i for i, name in enumerate(BORDERS)},
        **{name: codes["degradation"] == i for i, name in enumerate(DEGRADATIONS)},
        **{name: codes["colour"] == i for i, name in enumerate(COLOURS)},
    }
    chosen["blur"] = chosen["gaussian_blur"] | chosen["motion_blur"] | chosen["defocus"]
    return chosen


# How a batch's parameters travel from a loader worker: in two tensors, a block of columns per
# parameter (each tensor a worker hands over costs the main process a round trip to that worker;
# the parameters one by one, with each transform's rows, were 25 tensors a batch).
_PACKED = {
    "int64": {
        "border": (),
        "degradation": (),
        "colour": (),
        "pixel_seed": (),
        "jitter_order": (len(JITTERS),),
        "holes": (MAX_HOLES, 4),
    },
    "float32": {"affine": (2, 3), "noise_std": (), "kernel": (KERNEL_SIZE, KERNEL_SIZE), "jitter": (4,)},
}


def to_batch(params: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """A batch's parameters (`draw`) packed as tensors, one per type, for `apply` to unpack."""
    n = len(params["border"])
    return {
        dtype: torch.from_numpy(
            np.concatenate([params[name].reshape(n, -1) for name in names], axis=1).astype(dtype)
        )
        for dtype, names in _PACKED.items()
    }


def unpack(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`to_batch`'s tensors as the parameters by name (views: nothing is copied)."""
    params = {}
    for dtype, shapes in _PACKED.items():
        packed, column = batch[dtype], 0
        for name, shape in shapes.items():
            width = math.prod(shape)
            params[name] = packed[:, column : column + width].reshape(len(packed), *shape)
            column += width
    return params


def _affine_matrices(geometry: np.ndarray, size: int) -> np.ndarray:
    """Source-to-destination pixel matrices [N, 2, 3]: scale per axis, rotate about the centre, shift."""
    scale_x, scale_y, shift_x, shift_y, degrees = geometry.T
    angles = [math.radians(d) for d in degrees]
    cos, sin = np.array([math.cos(a) for a in angles]), np.array([math.sin(a) for a in angles])
    linear = np.stack(
        [np.stack([cos * scale_x, -sin * scale_y], 1), np.stack([sin * scale_x, cos * scale_y], 1)], 1
    )
    centre = (size - 1) / 2
    offset = centre + np.stack([shift_x, shift_y], 1) * size - linear.sum(axis=2) * centre
    return np.concatenate([linear, offset[:, :, None]], axis=2).astype(np.float32)


def _blur_kernel(kind: str | None, numbers: np.ndarray) -> np.ndarray:
    """The normalised KERNEL_SIZE-square kernel of a firing blur degradation from its uniform
    numbers (Gaussian size and sigma, motion size, angle, direction and shift, defocus radius and
    alias blur); the identity for any other sample."""
    gaussian_size, sigma, motion_size, angle, direction, shift_x, shift_y, radius, alias = numbers
    if kind == "gaussian_blur":
        line = cv2.getGaussianKernel(3 + 2 * int(gaussian_size), sigma)
        chosen = line @ line.T
    elif kind == "motion_blur":
        chosen = _motion_kernel(3 + 2 * int(motion_size), angle, direction, (shift_x, shift_y))
    elif kind == "defocus":
        grid = np.arange(KERNEL_SIZE) - KERNEL_SIZE // 2
        disk = (grid[:, None] ** 2 + grid[None, :] ** 2 <= int(radius) ** 2).astype(np.float64)
        chosen = cv2.GaussianBlur(disk / disk.sum(), (3, 3), alias, borderType=cv2.BORDER_CONSTANT)
    else:
        chosen = np.ones((1, 1))
    kernel = np.zeros((KERNEL_SIZE, KERNEL_SIZE), dtype=np.float32)
    pad = (KERNEL_SIZE - len(chosen)) // 2
    kernel[pad : pad + len(chosen), pad : pad + len(chosen)] = chosen / chosen.sum()
    return kernel


def _motion_kernel(size: int, angle: float, direction: float, shift: tuple[float, float]) -> np.ndarray:
    """A line through the kernel at `angle` degrees, biased forward (direction > 0) or backward,
    shifted off the centre by up to a quarter of its length (albumentations' construction)."""
    half = size // 2
    start, end = -half * (1 - max(direction, 0)), half * (1 - max(-direction, 0))
    t = np.linspace(start, end, size)
    x = half + math.cos(math.radians(angle)) * t + shift[0] * half / 2
    y = half + math.sin(math.radians(angle)) * t + shift[1] * half / 2
    kernel = np.zeros((size, size))
    kernel[np.clip(np.round(y), 0, size - 1).astype(int), np.clip(np.round(x), 0, size - 1).astype(int)] = 1
    return kernel


def _holes(numbers: np.ndarray, size: int) -> np.ndarray:
    """[N, MAX_HOLES, 4] rows (top, left, bottom, right) in pixels from uniform numbers
    [N, 5, MAX_HOLES] (count, heights, widths, tops, lefts); holes beyond the count (1 to MAX_HOLES)
    are empty."""
    count = 1 + (numbers[:, 0, 0] * MAX_HOLES).astype(np.int64)
    extents = ((0.05 + 0.15 * numbers[:, 1:3]) * size).astype(np.int64)
    corners = (numbers[:, 3:5] * (size - extents + 1)).astype(np.int64)
    holes = np.concatenate([corners, corners + extents], axis=1).transpose(0, 2, 1)
    holes[np.arange(MAX_HOLES)[None, :] >= count[:, None]] = 0
    return holes


def apply(pixels: torch.Tensor, packed: dict, whole_batch: bool | None = None) -> torch.Tensor:
    """uint8 BGR [N, H, W, 3] and the batch's parameters (`to_batch`) -> the network's float input
    [N, 3, H, W], on the device the batch is on. Each transform runs either on its own rows only
    (the CPU's way: the work is the cost) or on the whole batch, keeping its rows' results (the
    GPU's way, the default there: shapes stay fixed, so cuDNN tunes each convolution once and the
    whole of it compiles into one graph). A sample's pixels are the same either way."""
    batch = unpack(packed)
    whole_batch = pixels.is_cuda if whole_batch is None else whole_batch
    on = _WholeBatch(batch) if whole_batch else _RowsOnly(batch)
    x = images.tensor_input(pixels)
    x = _geometric(x, batch, on)
    x = _degrade(x, batch, on)
    return _colour(x, batch, on)


class _RowsOnly:
    """on(name, x, transform): x with the samples that transform `name` takes replaced by
    transform(their images, their rows), run on those samples alone."""

    def __init__(self, batch: dict):
        # Found here: on a CPU, asking which samples fire costs no wait for a device.
        self.rows = {name: chosen.nonzero().flatten() for name, chosen in selections(batch).items()}

    def __call__(self, name: str, x: torch.Tensor, transform) -> torch.Tensor:
        rows = self.rows[name]
        if rows.numel():
            x[rows] = transform(x.index_select(0, rows), rows)  # a third of x[rows]'s time here
        return x


class _WholeBatch:
    """on(name, x, transform): the same, with transform run on every sample and kept where it fires."""

    def __init__(self, batch: dict):
        self.chosen = selections(batch)

    def __call__(self, name: str, x: torch.Tensor, transform) -> torch.Tensor:
        return torch.where(self.chosen[name][:, None, None, None], transform(x, slice(None)), x)


def _geometric(x: torch.Tensor, batch: dict, on) -> torch.Tensor:
    grids = _sampling_grids(batch["affine"], x)
    for name in BORDERS:
        x = on(
            name,
            x,
            lambda part, rows, name=name: torch.nn.functional.grid_sample(
                part, grids[rows], padding_mode=_PADDING[name], align_corners=True
            ),
        )
    return x


def _sampling_grids(matrix: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """grid_sample's grids [N, H, W, 2], in the type of the images `like`, warping them by their
    source-to-destination pixel matrices [N, 2, 3], for the three borders at once: affine_grid's
    arithmetic by broadcasting, where its batched matrix product with K = 3 took 1.2 ms for a batch
    of 16 on a CPU."""
    # grid_sample wants destination -> source in [-1, 1] coordinates (pixel centres at the ends).
    linear, offset = matrix[:, :, :2].to(like.dtype), matrix[:, :, 2].to(like.dtype)
    a, b, c, d = linear[:, 0, 0], linear[:, 0, 1], linear[:, 1, 0], linear[:, 1, 1]
    inverse = torch.stack([d, -b, -c, a], dim=1).reshape(-1, 2, 2) / (a * d - b * c)[:, None, None]
    height, width = like.shape[-2:]
    centre = (width - 1) / 2
    shift = (torch.einsum("nij,nj->ni", inverse, centre - offset) - centre) / centre
    theta = torch.cat([inverse, shift[:, :, None]], dim=2)[:, :, :, None, None]
    xs = torch.linspace(-1, 1, width, dtype=like.dtype, device=like.device)[None, None, :]
    ys = torch.linspace(-1, 1, height, dtype=like.dtype, device=like.device)[None, :, None]
    return torch.stack([xs * theta[:, i, 0] + ys * theta[:, i, 1] + theta[:, i, 2] for i in (0, 1)], dim=-1)


def _degrade(x: torch.Tensor, batch: dict, on) -> torch.Tensor:
    seeds = batch["pixel_seed"]

    def noisy(part: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        std = batch["noise_std"][rows].to(x.dtype)[:, None, None, None]
        return (part + std * normal(seeds[rows], part.shape[1:], part.device)).clamp(0, 1)

    def blurred(part: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return _filter(part, batch["kernel"][rows].to(part.dtype), "reflect")

    x = on("noise", x, noisy)
    x = on("blur", x, blurred)
    for mode in ("rain", "mud"):
        x = on(mode, x, lambda part, rows, mode=mode: _spatter(part, seeds[rows], mode))
    holes = batch["holes"]
    return on("dropout", x, lambda part, rows: _dropout(part, holes[rows], seeds[rows]))


def _spatter(x: torch.Tensor, seeds: torch.Tensor, mode: str) -> torch.Tensor:
    n, _, height, width = x.shape
    liquid_blur = _like(_LIQUID_BLUR, x).expand(n, -1, -1)
    layer = _LIQUID_MEAN + _LIQUID_STD * normal(seeds, (1, height, width), x.device)
    layer = _filter(layer, liquid_blur, "replicate")
    layer = torch.where(layer < _LIQUID_CUT, 0.0, layer)
    if mode == "rain":
        shade = _filter(layer, _like(_EMBOSS, x).expand(n, -1, -1), "replicate")
        shade = _filter(shade, _like(_DROP_BLUR, x).expand(n, -1, -1), "replicate").relu()
        drops = _per_sample_unit(layer * shade) * _SPATTER_INTENSITY * 0.9
        return (x + drops * _colour_tensor(_RAIN_COLOUR, x)).clamp(0, 1)
    mask = _filter((layer > _LIQUID_CUT).to(x.dtype), liquid_blur, "replicate")
    mask = _per_sample_unit(mask) * _SPATTER_INTENSITY
    return x * (1 - mask) + mask * _colour_tensor(_MUD_COLOUR, x)


def _filter(x: torch.Tensor, kernels: torch.Tensor, border: str) -> torch.Tensor:
    """Each image [N, C, H, W] correlated with its own square kernel [N, K, K], every channel alike,
    the border extended as `border` (torch's pad modes: reflect is OpenCV's REFLECT_101)."""
    n, channels, height, width = x.shape
    size = kernels.shape[-1]
    padded = torch.nn.functional.pad(x.reshape(1, n * channels, height, width), [size // 2] * 4, mode=border)
    weights = kernels.repeat_interleave(channels, dim=0)[:, None]
    return torch.nn.functional.conv2d(padded, weights, groups=n * channels).view(n, channels, height, width)


def _per_sample_unit(field: torch.Tensor) -> torch.Tensor:
    """Each sample's field divided by its maximum (all-zero fields stay zero)."""
    peak = field.amax(dim=(1, 2, 3), keepdim=True)
    return field / torch.where(peak > 0, peak, 1.0)


def _colour_tensor(colour: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return _like(colour, like)[None, :, None, None] / 255


_ON_DEVICES: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def _like(constant: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """One of this module's constant arrays as a tensor of `like`'s type and device, copied there
    once: every copy from host memory waits for the device to finish its queue."""
    key = (id(constant), like.dtype, like.device)
    if key not in _ON_DEVICES:
        _ON_DEVICES[key] = torch.as_tensor(constant, dtype=like.dtype, device=like.device)
    return _ON_DEVICES[key]


def constants_to(device: torch.device) -> None:
    """This module's constants copied to `device` ahead of a compiled `apply`, which then only reads
    them (a copy made inside a graph of CUDA graphs would live in memory the next replay reuses)."""
    on_device = torch.empty(0, device=device)
    for constant in (_LIQUID_BLUR, _EMBOSS, _DROP_BLUR, _GREY, _RAIN_COLOUR, _MUD_COLOUR, _YIQ, _YIQ_INVERSE):
        _like(constant, on_device)


def _dropout(x: torch.Tensor, holes: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
    height, width = x.shape[-2:]
    ys = torch.arange(height, device=x.device)[None, None, :, None]
    xs = torch.arange(width, device=x.device)[None, None, None, :]
    top, left, bottom, right = (holes[..., i, None, None] for i in range(4))
    inside = ((ys >= top) & (ys < bottom) & (xs >= left) & (xs < right)).any(dim=1, keepdim=True)
    return torch.where(inside, uniform(seeds, x.shape[1:], x.device).to(x.dtype), x)


def _colour(x: torch.Tensor, batch: dict, on) -> torch.Tensor:
    x = on("equalize", x, lambda part, rows: _equalize(part))
    return on(
        "jitter",
        x,
        lambda part, rows: _jitter(part, batch["jitter"][rows].to(part.dtype), batch["jitter_order"][rows]),
    )


def _equalize(x: torch.Tensor) -> torch.Tensor:
    """OpenCV's equalizeHist on each channel of each image, on its 256 grey levels: the levels map
    through the histogram's cumulative counts, the first level present to black, the last to white
    (kornia's equalize, measured against the old path, turned flat backgrounds into flat colour)."""
    n, channels = x.shape[:2]
    levels = (x * 255).round().long().flatten(2)
    offsets = torch.arange(n * channels, device=x.device).view(n, channels, 1) * 256
    # Counted by scatter_add, not bincount, which asks the device for the largest level first.
    counts = torch.zeros(n * channels * 256, dtype=torch.int64, device=x.device)
    counts = counts.scatter_add_(0, (levels + offsets).flatten(), torch.ones_like(levels).flatten()).view(
        n, channels, 256
    )
    first = counts.gather(2, (counts > 0).int().argmax(dim=2, keepdim=True))
    spread = levels.shape[2] - first
    lut = ((counts.cumsum(dim=2) - first) * 255 / spread.clamp(min=1)).round()
    lut = torch.where(spread > 0, lut, torch.arange(256, device=x.device, dtype=lut.dtype))
    return (lut.gather(2, levels) / 255).view_as(x).to(x.dtype)


def _jitter(x: torch.Tensor, factors: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """torchvision's colour jitter, each sample's four adjustments in its own order, each a linear
    map of the colour (x -> A x + b, then clipped): brightness scales, contrast blends with the
    mean grey, saturation with the pixel's grey, and hue rotates the chroma in YIQ (as DALI does;
    torchvision shifts it in HSV). The four maps are built at once; only contrast's offset, the
    mean grey of the image so far, waits for the adjustments before it."""
    n, channels, height, width = x.shape
    factor = factors.gather(1, order)[:, :, None, None]  # [N, position, 1, 1]
    grey = _like(_GREY, x)
    scaled = factor * torch.eye(3, dtype=x.dtype, device=x.device)
    toward_grey = grey[None, :].expand(3, 3)  # each output channel takes the grey of the pixel
    matrices = torch.where(
        (order == JITTERS.index("saturation"))[:, :, None, None], scaled + (1 - factor) * toward_grey, scaled
    )
    turned = _hue_rotation(factor.flatten()).view(n, len(JITTERS), 3, 3)
    matrices = torch.where((order == JITTERS.index("hue"))[:, :, None, None], turned, matrices)
    contrast = (order == JITTERS.index("contrast"))[:, :, None]
    flat = x.reshape(n, channels, height * width)
    for position in range(len(JITTERS)):
        mean_grey = torch.einsum("c,nck->n", grey, flat) / flat.shape[-1]
        offset = torch.where(contrast[:, position], (1 - factor[:, position, 0]) * mean_grey[:, None], 0.0)
        flat = (torch.bmm(matrices[:, position], flat) + offset[:, :, None]).clamp_(0, 1)
    return flat.view_as(x)


_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])[:, [2, 1, 0]]
_YIQ_INVERSE = np.linalg.inv(_YIQ)


def _hue_rotation(turns: torch.Tensor) -> torch.Tensor:
    """BGR -> BGR matrices [N, 3, 3] turning the hue by `turns` of the circle."""
    angle = 2 * math.pi * turns
    cos, sin = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(cos), torch.zeros_like(cos)
    rotation = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], dim=1).reshape(-1, 3, 3)
    return _like(_YIQ_INVERSE, turns) @ rotation @ _like(_YIQ, turns)


def uniform(seeds: torch.Tensor, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Floats in [0, 1) of `shape` per seed, the same on every device: a counter hashed with the
    seed (torch's generators differ between CPU and CUDA, and a batch would share their stream)."""
    counter = torch.arange(math.prod(shape), device=device, dtype=torch.int32)[None]
    keys = _hash32(seeds.to(device=device, dtype=torch.int32)[:, None])
    bits = _hash32(counter * _GOLDEN + keys)
    return (((bits >> 8) & 0xFFFFFF).to(torch.float32) / 2**24).reshape(len(seeds), *shape)


def normal(seeds: torch.Tensor, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Standard normal floats of `shape` per seed (Box-Muller, both of each pair's outputs)."""
    count = math.prod(shape)
    pairs = uniform(seeds, (2, (count + 1) // 2), device)
    radius, angle = torch.sqrt(-2 * torch.log1p(-pairs[:, 0])), 2 * math.pi * pairs[:, 1]
    both = torch.cat([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return both[:, :count].reshape(len(seeds), *shape)


# lowbias32's multipliers and the golden ratio's, as the int32 values of their bits: int32 products
# wrap (tested against numpy's uint32), and int32 runs ~3x faster than int64 here.
_GOLDEN, _MIX_1, _MIX_2 = 0x9E3779B9 - 2**32, 0x7FEB352D, 0x846CA68B - 2**32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int32 (logical shifts by masking the sign's copies off)."""
    x = (x ^ ((x >> 16) & 0xFFFF)) * _MIX_1
    x = (x ^ ((x >> 15) & 0x1FFFF)) * _MIX_2
    return x ^ ((x >> 16) & 0xFFFF)
