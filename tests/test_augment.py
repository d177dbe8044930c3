"""The batched augmentation draws what the config asks, through the seeds the sampler gives each
training sample: each block at its own p, independently; each member of a block equally often;
every parameter uniform over its recipe range; and `apply` does to the pixels what the parameters
say, to each sample whatever its batchmates."""

from __future__ import annotations

import functools
import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from doctrain import augment, images
from doctrain.dataset import ClassBalancedSampler

SAMPLES = 6000
SIZE = 96
P = {"shift_scale_rotate_p": 0.5, "degradation_p": 0.5, "colour_p": 0.3}  # the demo's
# A deviation this many binomial standard errors away fails (a fair test fails ~1 run in 10^6).
SIGMAS = 5


@pytest.fixture(scope="module")
def drawn() -> dict[str, np.ndarray]:
    seeds = np.array([seed for _, seed in ClassBalancedSampler(np.arange(4), SAMPLES, seed=42)])
    return augment.draw({"enabled": True, **P}, seeds, SIZE)


def assert_rate(observed: float, expected: float, n: int) -> None:
    error = math.sqrt(expected * (1 - expected) / n)
    assert abs(observed - expected) < SIGMAS * error, (observed, expected, n)


def assert_uniform(values: np.ndarray, low: float, high: float) -> None:
    assert values.min() >= low and values.max() <= high, (values.min(), values.max(), low, high)
    assert stats.kstest(values, stats.uniform(low, high - low).cdf).pvalue > 1e-4


def assert_equally_often(choices: np.ndarray, options: int) -> None:
    counts = np.bincount(choices, minlength=options)
    assert len(counts) == options and stats.chisquare(counts).pvalue > 1e-4, counts


def test_each_block_fires_at_its_own_rate_and_independently_of_the_others(drawn):
    fired = np.stack([drawn[block] != augment.NONE for block in ("border", "degradation", "colour")], axis=1)
    for rate, p in zip(fired.mean(axis=0), P.values(), strict=True):
        assert_rate(rate, p, SAMPLES)
    for a, b in itertools.combinations(range(3), 2):
        assert_rate((fired[:, a] & fired[:, b]).mean(), list(P.values())[a] * list(P.values())[b], SAMPLES)
    assert_rate(fired.all(axis=1).mean(), math.prod(P.values()), SAMPLES)


def test_each_member_of_a_block_is_chosen_equally_often(drawn):
    for block, members in (
        ("border", augment.BORDERS),
        ("degradation", augment.DEGRADATIONS),
        ("colour", augment.COLOURS),
    ):
        chosen = drawn[block][drawn[block] != augment.NONE]
        assert_equally_often(chosen, len(members))


def test_the_affine_parameters_are_uniform_over_the_recipe_ranges(drawn):
    matrix = drawn["affine"].astype(np.float64)
    angle = np.degrees(np.arctan2(matrix[:, 1, 0], matrix[:, 0, 0]))
    scale_x, scale_y = np.hypot(matrix[:, 0, 0], matrix[:, 1, 0]), np.hypot(matrix[:, 0, 1], matrix[:, 1, 1])
    centre = (SIZE - 1) / 2
    shift = (matrix[:, :, 2] - centre + matrix[:, :, :2].sum(axis=2) * centre) / SIZE
    assert_uniform(angle, -15.0001, 15.0001)
    assert_uniform(scale_x, 0.8999, 1.1001)
    assert_uniform(scale_y, 0.8999, 1.1001)
    assert_uniform(shift[:, 0], -0.0626, 0.0626)
    assert_uniform(shift[:, 1], -0.0626, 0.0626)
    assert abs(np.corrcoef(scale_x, scale_y)[0, 1]) < 0.05  # per axis, as albumentations draws them


def test_degradation_and_colour_parameters_are_uniform_over_their_ranges(drawn):
    assert_uniform(drawn["noise_std"], 0.02, 0.1)
    for column, (low, high) in enumerate([(0.7, 1.3)] * 3 + [(-0.05, 0.05)]):
        assert_uniform(drawn["jitter"][:, column], low, high)
    orders = [tuple(order) for order in drawn["jitter_order"]]
    permutations = {order: n for n, order in enumerate(itertools.permutations(range(4)))}
    assert_equally_often(np.array([permutations[order] for order in orders]), 24)
    holes = drawn["holes"]
    used = (holes[:, :, 2] > holes[:, :, 0]).sum(axis=1)
    assert_equally_often(used - 1, augment.MAX_HOLES)
    real = holes[holes[:, :, 2] > holes[:, :, 0]]
    for extent in (real[:, 2] - real[:, 0], real[:, 3] - real[:, 1]):
        assert extent.min() >= int(0.05 * SIZE) and extent.max() <= int(0.2 * SIZE), extent
    assert real.min() >= 0 and real[:, 2:].max() <= SIZE


def test_blur_kernels_are_normalised_and_as_wide_as_drawn(drawn):
    kinds = drawn["degradation"]
    for name, widest in (("gaussian_blur", 5), ("motion_blur", 7), ("defocus", 9)):
        kernels = drawn["kernel"][kinds == augment.DEGRADATIONS.index(name)]
        assert len(kernels) > 100
        np.testing.assert_allclose(kernels.sum(axis=(1, 2)), 1.0, atol=1e-5)
        support = [np.flatnonzero((k > 1e-6).any(axis=0)) for k in kernels]
        widths = [s.max() - s.min() + 1 for s in support]
        assert max(widths) == widest and min(widths) >= 1, (name, min(widths), max(widths))
    identity = drawn["kernel"][kinds == augment.NONE]
    assert (identity[:, augment.KERNEL_SIZE // 2, augment.KERNEL_SIZE // 2] == 1).all()


def test_a_batch_travels_as_two_tensors_and_unpacks_to_what_was_drawn(drawn):
    batch = augment.to_batch({key: value[:64] for key, value in drawn.items()})
    assert len(batch) == 2
    unpacked = augment.unpack(batch)
    assert unpacked.keys() == drawn.keys()
    for key, value in unpacked.items():
        np.testing.assert_array_equal(value.numpy(), drawn[key][:64], err_msg=key)


def test_switched_off_every_sample_goes_through_clean():
    params = augment.draw({"enabled": False, **P}, np.arange(200), SIZE)
    assert all((params[block] == augment.NONE).all() for block in ("border", "degradation", "colour"))
    pixels = torch.randint(0, 256, (8, SIZE, SIZE, 3), dtype=torch.uint8)
    out = augment.apply(pixels.clone(), augment.to_batch({key: value[:8] for key, value in params.items()}))
    assert torch.equal(out, torch.from_numpy(images.to_input(pixels.numpy())))


def forced(kind: str, value: int, n: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """The parameters of n samples whose block `kind` ("border", "degradation" or "colour") is `value`."""
    params = augment.draw({"enabled": False, **P}, np.arange(seed, seed + n), SIZE)
    params[kind] = np.full(n, value)
    if kind == "degradation" and augment.DEGRADATIONS[value].endswith(("blur", "defocus")):
        enabled = augment.draw({"enabled": True, **P}, np.arange(seed, seed + 4000), SIZE)
        params["kernel"] = enabled["kernel"][enabled["degradation"] == value][:n]
    return params


def applied(pixels: torch.Tensor, params: dict[str, np.ndarray]) -> torch.Tensor:
    return augment.apply(pixels, augment.to_batch(params))


def grey(n: int = 16, level: int = 128) -> torch.Tensor:
    return torch.full((n, SIZE, SIZE, 3), level, dtype=torch.uint8)


def test_noise_has_the_drawn_standard_deviation():
    params = forced("degradation", augment.DEGRADATIONS.index("noise"))
    out = applied(grey(), params)
    measured = (out - 128 / 255).flatten(1).std(dim=1)
    np.testing.assert_allclose(measured.numpy(), params["noise_std"], rtol=0.05)
    assert abs(float((out - 128 / 255).mean())) < 1e-3


def test_blurs_and_identity_warps_keep_a_flat_image_flat_and_warps_move_content():
    flat = torch.full((16, 3, SIZE, SIZE), 128 / 255)
    for name in ("gaussian_blur", "motion_blur", "defocus"):
        out = applied(grey(), forced("degradation", augment.DEGRADATIONS.index(name)))
        torch.testing.assert_close(out, flat, atol=1e-5, rtol=0)
    pixels = torch.randint(0, 256, (16, SIZE, SIZE, 3), dtype=torch.uint8)
    params = forced("border", 1)
    params["affine"] = np.tile(np.eye(2, 3, dtype=np.float32), (16, 1, 1))
    torch.testing.assert_close(applied(pixels, params), images.tensor_input(pixels), atol=1e-4, rtol=0)
    # A constant border brings black in at the corners; replicate and reflect bring none.
    for border, black in ((0, True), (1, False), (2, False)):
        out = applied(grey(level=200), forced("border", border))
        assert bool((out < 0.05).any()) == black, border


@pytest.mark.parametrize(
    ("border", "opencv"),
    [(0, "BORDER_CONSTANT"), (1, "BORDER_REFLECT_101"), (2, "BORDER_REPLICATE")],
)
def test_the_warp_is_the_drawn_matrix_as_opencv_applies_it(border, opencv):
    import cv2

    pixels = torch.from_numpy(np.random.default_rng(2).integers(0, 256, (16, SIZE, SIZE, 3), dtype=np.uint8))
    params = forced("border", border)
    out = applied(pixels.clone(), params)
    for row in range(0, 16, 3):
        matrix = params["affine"][row]
        expected = cv2.warpAffine(
            pixels[row].numpy().astype(np.float32) / 255,
            matrix,
            (SIZE, SIZE),
            flags=cv2.INTER_LINEAR,
            borderMode=getattr(cv2, opencv),
        )
        difference = np.abs(out[row].permute(1, 2, 0).numpy() - expected)
        # OpenCV interpolates with 5-bit weights: off by up to 1/32 of a neighbour difference.
        assert difference.mean() < 2e-3 and np.percentile(difference, 99) < 0.03, (row, difference.mean())


def test_dropout_fills_exactly_the_drawn_holes_with_noise():
    params = forced("degradation", augment.DEGRADATIONS.index("dropout"))
    out = applied(grey(), params)
    changed = (out != 128 / 255).any(dim=1)
    for sample, holes in zip(changed, params["holes"], strict=True):
        expected = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        for top, left, bottom, right in holes.tolist():
            expected[top:bottom, left:right] = True
        # A random fill can land on the grey level itself in a pixel's three channels at once: ~never.
        assert torch.equal(sample, expected)


def test_spatter_covers_part_of_the_image_in_its_colour():
    for name, brighter in (("rain", True), ("mud", False)):
        out = applied(grey(), forced("degradation", augment.DEGRADATIONS.index(name)))
        change = (out - 128 / 255).mean(dim=1)
        covered = (change.abs() > 0.02).flatten(1).float().mean(dim=1)
        assert (covered > 0.01).all() and (covered < 0.9).all(), (name, covered)
        assert bool(((change > 0) if brighter else (change < 0))[change.abs() > 0.02].float().mean() > 0.9)


def test_equalize_is_opencvs_per_channel_and_jitter_stays_in_range():
    import cv2

    rng = np.random.default_rng(3)
    pixels = rng.normal(120, 10, (16, SIZE, SIZE, 3)).clip(0, 255).astype(np.uint8)
    pixels[1] = 77  # a flat image stays as it is
    out = applied(torch.from_numpy(pixels), forced("colour", augment.COLOURS.index("equalize")))
    expected = np.stack([cv2.merge([cv2.equalizeHist(image[:, :, c]) for c in range(3)]) for image in pixels])
    np.testing.assert_array_equal(np.round(out.permute(0, 2, 3, 1).numpy() * 255), expected)
    out = applied(torch.randint(0, 256, (16, SIZE, SIZE, 3), dtype=torch.uint8), forced("colour", 1))
    assert float(out.min()) >= 0 and float(out.max()) <= 1


def test_a_sample_is_augmented_the_same_whatever_its_batchmates():
    rng = np.random.default_rng(1)
    pixels = torch.from_numpy(rng.integers(0, 256, (24, SIZE, SIZE, 3), dtype=np.uint8))
    always = {"enabled": True, "shift_scale_rotate_p": 1, "degradation_p": 1, "colour_p": 1}
    seeds = np.arange(24)
    params = augment.draw(always, seeds, SIZE)
    whole = augment.apply(pixels.clone(), augment.to_batch(params))
    for row in range(0, 24, 5):
        drawn_alone = augment.draw(always, seeds[row : row + 1], SIZE)
        for key, value in drawn_alone.items():
            np.testing.assert_array_equal(value[0], params[key][row], err_msg=key)
        alone = augment.apply(pixels[row : row + 1].clone(), augment.to_batch(drawn_alone))
        torch.testing.assert_close(alone[0], whole[row], atol=1e-5, rtol=0)


def test_the_whole_batch_way_gives_every_sample_the_pixels_of_its_rows_alone():
    """A GPU runs each transform over the whole batch and keeps the results of the samples it
    takes; a CPU runs it on those samples alone. Every family fires in this batch; the pixels are
    the same bit for bit."""
    rng = np.random.default_rng(2)
    pixels = torch.from_numpy(rng.integers(0, 256, (64, SIZE, SIZE, 3), dtype=np.uint8))
    always = {"enabled": True, "shift_scale_rotate_p": 1, "degradation_p": 1, "colour_p": 1}
    batch = augment.to_batch(augment.draw(always, np.arange(64), SIZE))
    assert all(chosen.any() for chosen in augment.selections(augment.unpack(batch)).values())
    rows_only = augment.apply(pixels.clone(), batch, whole_batch=False)
    assert torch.equal(augment.apply(pixels.clone(), batch, whole_batch=True), rows_only)
    assert not torch.equal(rows_only, images.tensor_input(pixels))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_apply_never_waits_for_the_gpu():
    """Every family fires in this batch; a host synchronisation (a row count asked of the device, a
    constant copied from host memory) would stall the queue of training steps behind it."""
    always = {"enabled": True, "shift_scale_rotate_p": 1, "degradation_p": 1, "colour_p": 1}
    batch = augment.to_batch(augment.draw(always, np.arange(256), SIZE))
    pixels = torch.randint(0, 256, (256, SIZE, SIZE, 3), dtype=torch.uint8)
    on_gpu = torch.utils._pytree.tree_map(lambda t: t.cuda(non_blocking=False), (pixels, batch))
    augment.apply(*on_gpu)  # first call: the module's constants go to the device
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        augment.apply(*on_gpu)
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_augmentation_compiled_into_cuda_graphs_draws_what_the_eager_one_draws():
    """trainer.compile's reduce-overhead on a GPU: the whole-batch augmentation replayed as CUDA
    graphs. Fused kernels round differently, so a few grey levels may flip at equalize's steps."""
    always = {"enabled": True, "shift_scale_rotate_p": 1, "degradation_p": 1, "colour_p": 1}
    device = torch.device("cuda")
    batches = [
        torch.utils._pytree.tree_map(
            lambda t: t.to(device),
            (
                torch.randint(0, 256, (64, SIZE, SIZE, 3), dtype=torch.uint8),
                augment.to_batch(augment.draw(always, np.arange(start, start + 64), SIZE)),
            ),
        )
        for start in (0, 64, 128, 192)
    ]
    augment.constants_to(device)
    compiled = torch.compile(functools.partial(augment.apply, whole_batch=True), mode="reduce-overhead")
    for pixels, batch in batches:  # warm-up, recording, then replays
        difference = (compiled(pixels, batch).clone() - augment.apply(pixels, batch)).abs()
        assert difference.mean() < 1e-3 and (difference > 1e-4).float().mean() < 0.01, difference.max()


def test_the_pixel_generator_is_uniform_and_normal_and_a_function_of_the_seed():
    seeds = torch.tensor([3, 4, 3])
    values = augment.uniform(seeds, (4, 100, 100), torch.device("cpu"))
    assert torch.equal(values[0], values[2]) and not torch.equal(values[0], values[1])
    assert stats.kstest(values[1].flatten().numpy(), "uniform").pvalue > 1e-4
    normals = augment.normal(torch.tensor([7]), (40_000,), torch.device("cpu"))[0].numpy()
    assert stats.kstest(normals, "norm").pvalue > 1e-4


@pytest.mark.parametrize("name", ["brightness", "contrast", "saturation"])
def test_each_jitter_adjustment_is_torchvisions(name):
    from torchvision.transforms.v2 import functional as F

    x = torch.rand(8, 3, 24, 24)
    factor = torch.linspace(0.7, 1.3, 8)
    factors = torch.tensor([1.0, 1.0, 1.0, 0.0]).repeat(8, 1)
    factors[:, augment.JITTERS.index(name)] = factor
    out = augment._jitter(x.clone(), factors, torch.arange(4).repeat(8, 1))
    adjust = getattr(F, f"adjust_{name}")
    expected = torch.stack(
        [adjust(image.flip(0), float(f)).flip(0) for image, f in zip(x, factor, strict=True)]
    )
    torch.testing.assert_close(out, expected, atol=2e-3, rtol=0)


def test_the_hue_turn_keeps_greys_and_turns_colours():
    grey_and_red = torch.tensor([[0.5, 0.5, 0.5], [0.1, 0.1, 0.9]])[:, :, None, None]  # BGR pixels
    factors = torch.tensor([[1.0, 1.0, 1.0, 0.05], [1.0, 1.0, 1.0, 0.05]])
    out = augment._jitter(grey_and_red.clone(), factors, torch.arange(4).repeat(2, 1))
    torch.testing.assert_close(out[0], grey_and_red[0], atol=1e-5, rtol=0)
    assert (out[1] - grey_and_red[1]).abs().max() > 0.05


def test_the_int32_hash_is_lowbias32_as_unsigned_arithmetic_computes_it():
    values = np.arange(-5000, 200_000, 7, dtype=np.int64)
    expected = values.astype(np.uint32)
    with np.errstate(over="ignore"):
        expected = (expected ^ (expected >> np.uint32(16))) * np.uint32(0x7FEB352D)
        expected = (expected ^ (expected >> np.uint32(15))) * np.uint32(0x846CA68B)
        expected ^= expected >> np.uint32(16)
    hashed = augment._hash32(torch.from_numpy(values.astype(np.int32))).numpy()
    np.testing.assert_array_equal(hashed.astype(np.uint32), expected)
