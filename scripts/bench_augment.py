"""Data path benchmark: does the training step wait for its augmented samples?

On an experiment's prepared cache (default the demo, after `snakemake --cores 2
results/demo/cache/summary.json`), measures in one run, per tree (this one and, with --compare REV,
the workflow's library as at git revision REV: the old path), alternating the trees each repeat:
  in-memory step   Lightning fit steps on one resident batch with augmentation off: the step alone,
                   eager and, for this tree, torch.compile'd in each --compile mode;
  in-memory step with its augmentation  the same on one resident batch as the loader gives it
                   (a tree that augments in the step, on the training device, does so each step);
  real data path   Lightning fit steps on the experiment's own loaders, workers and augmentation;
  the same three, interleaved  on a CPU, one fit that takes their batches in turn, 10 at a time,
                   each timed on its own: side by side within seconds (the shared machine's speed
                   moved 30 % between rows a minute apart);
  augmentation alone  the loader with no workers plus, where the tree applies it after the loader,
                   the batched augmentation, in the configured threads: what feeding the step costs.
Prints one table: median samples/s and each tree's real data path over its in-memory step (target on
2 CPU cores: >= 0.85) and over its in-memory step with augmentation (what the loader alone costs),
each the median over repeats of the ratio within a repeat. Every fit takes the experiment's CPU
kernel path (trainer.cpu_kernels: the demo's AVX2), as its training does.
With a CUDA device the rows run there too, with its mean utilisation; without one the GPU rows say
"not measured".
With --picture PATH, also draws the same cache samples through REV's and this tree's augmentation,
one row per transform family of the recipe, side by side.
REV's path needs its own dependencies in this environment (before 2026-12-04: albumentations==2.0.8).

    python scripts/bench_augment.py [--config configs/demo.yaml] [--compare REV] [--repeats 3]
        [--steps 150] [--compile default reduce-overhead] [--picture docs/img/augmentation.png]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from benchlib import BLOCK, ROOT, WARMUP_STEPS, files_at, fit_rate, interleaved_rates

FAMILIES = (
    [("geometric", member) for member in ("constant", "reflect", "replicate")]
    + [
        ("degradation", member)
        for member in ("noise", "gaussian_blur", "motion_blur", "defocus", "rain", "mud", "dropout")
    ]
    + [("colour", member) for member in ("equalize", "jitter")]
)
PICTURE_SAMPLES, PICTURE_SEEDS = (0, 7, 19), (11, 12)
AUGMENTED_STEP = "in-memory step with its augmentation"
INTERLEAVED = ", interleaved"


def in_child(src: Path, *args: str) -> dict:
    """This script's --child mode with `src` first on the import path; its JSON answer."""
    env = dict(os.environ, PYTHONPATH=str(src))
    result = subprocess.run(
        [sys.executable, __file__, "--child", *args], env=env, capture_output=True, text=True
    )
    if result.returncode != 0:
        sys.exit(f"bench_augment: the measurement with {src} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---- the child: measures one tree, whichever library is first on the import path ----------------


def augmentation_rate(settings: dict, cache, steps: int) -> float:
    """Samples/s of reading, drawing and augmenting in the main process (no workers, no step)."""
    from doctrain import augment
    from doctrain.dataset import loaders

    unworked = copy.deepcopy(settings)
    unworked["data"]["loader"].update(num_workers=0, persistent_workers=False)
    batches = iter(loaders(cache, unworked)[0])
    apply = getattr(augment, "apply", None)
    started, samples = None, 0
    for step in range(WARMUP_STEPS + steps):
        if step == WARMUP_STEPS:
            started, samples = time.perf_counter(), 0
        batch = next(batches)
        if apply is not None and len(batch) == 3:  # the batched path augments after the loader
            apply(batch[0], batch[2])
        samples += len(batch[1])
    return samples / (time.perf_counter() - started)


def child_measure(config: str, cache_dir: str, steps: int, device: str, compile_modes: list[str]) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from doctrain.cache import Cache
    from doctrain.config import load_config
    from doctrain.dataset import loaders
    from doctrain.fingerprint import stage_settings
    from doctrain.training import pin_cpu_kernels

    settings = stage_settings(load_config(config), "train")
    settings["data"]["samples_per_epoch"] = (WARMUP_STEPS + steps + 1) * settings["data"]["batch_size"]
    pin_cpu_kernels(settings["trainer"])  # the kernel path its training takes (the demo's: AVX2)
    torch.set_num_threads(settings["trainer"]["threads"] or torch.get_num_threads())
    cache = Cache(cache_dir)
    num_classes = int(cache.split("train")["class_id"].max()) + 1
    in_main_process = copy.deepcopy(settings)
    in_main_process["data"]["loader"].update(num_workers=0, persistent_workers=False)
    clean = copy.deepcopy(in_main_process)
    clean["augment"]["enabled"] = False
    resident = next(iter(loaders(cache, clean)[0]))
    in_memory = DataLoader([resident] * (WARMUP_STEPS + steps), batch_size=None)
    rows = {"in-memory step": fit_rate(settings, in_memory, num_classes, steps, device)}
    for mode in compile_modes:
        rows[f"in-memory step, compiled {mode}"] = fit_rate(
            settings, in_memory, num_classes, steps, device, compile_mode=mode
        )
    drawn = next(iter(loaders(cache, in_main_process)[0]))
    augmented = DataLoader([drawn] * (WARMUP_STEPS + steps), batch_size=None)
    rows[AUGMENTED_STEP] = fit_rate(settings, augmented, num_classes, steps, device)
    rows["real data path"] = fit_rate(settings, loaders(cache, settings)[0], num_classes, steps, device)
    if device == "cpu":
        sources = {
            "in-memory step": itertools.repeat(resident),
            AUGMENTED_STEP: itertools.repeat(drawn),
            "real data path": loaders(cache, settings)[0],
        }
        interleaved = interleaved_rates(settings, sources, num_classes, steps * len(sources))
        rows.update({kind + INTERLEAVED: {"samples/s": rate} for kind, rate in interleaved.items()})
        rows["augmentation alone"] = {"samples/s": augmentation_rate(settings, cache, steps)}
    return rows


def child_picture(config: str, cache_dir: str) -> dict:
    """uint8 [families, samples x seeds, H, W, 3] of this tree's augmentation, one family at a time."""
    from doctrain import augment
    from doctrain.cache import Cache
    from doctrain.config import load_config
    from doctrain.fingerprint import stage_settings

    settings = {**stage_settings(load_config(config), "train")["augment"], "enabled": True}
    cache = Cache(cache_dir)
    train = cache.split("train")
    originals = [
        np.ascontiguousarray(cache.sample(int(train["image"].iloc[s]), int(train["variant"].iloc[s])))
        for s in PICTURE_SAMPLES
    ]
    seeds = PICTURE_SEEDS
    augmented = forcing_albumentations if hasattr(augment, "build") else forcing_batched
    grid = [
        [augmented(augment, settings, block, member, image, seed) for image in originals for seed in seeds]
        for block, member in FAMILIES
    ]
    return {"images": np.array(grid).tolist(), "originals": np.array(originals).tolist()}


def forcing_albumentations(augment, settings: dict, block: str, member: str, image, seed: int) -> np.ndarray:
    """The old path: the block's member transform alone, seeded as the old loader seeded a sample."""
    import albumentations as A

    blocks = [[m for b, m in FAMILIES if b == name] for name in ("geometric", "degradation", "colour")]
    block_index = ("geometric", "degradation", "colour").index(block)
    chosen = augment.build(settings).transforms[block_index].transforms[blocks[block_index].index(member)]
    return augment.seeded(A.Compose([chosen]), seed)(image=image)["image"]


def forcing_batched(augment, settings: dict, block: str, member: str, image, seed: int) -> np.ndarray:
    """The new path: the first seed from `seed` * 1000 on whose draw, with only this block on, is
    this member."""
    import itertools

    import numpy as np
    import torch

    key = {"geometric": "border", "degradation": "degradation", "colour": "colour"}[block]
    members = {"border": augment.BORDERS, "degradation": augment.DEGRADATIONS, "colour": augment.COLOURS}[key]
    only = {"shift_scale_rotate_p": 0.0, "degradation_p": 0.0, "colour_p": 0.0}
    only[{"border": "shift_scale_rotate_p", "degradation": "degradation_p", "colour": "colour_p"}[key]] = 1.0
    size = image.shape[0]
    params = next(
        drawn
        for candidate in itertools.count(seed * 1000)
        if (drawn := augment.draw({**settings, **only}, np.array([candidate]), size))[key][0]
        == members.index(member)
    )
    out = augment.apply(torch.from_numpy(image)[None], augment.to_batch(params))[0]
    return np.round(out.permute(1, 2, 0).numpy() * 255).astype(np.uint8)


# ---- the parent: alternates the trees, prints the table, draws the picture ----------------------


def table(results: dict[str, dict[str, list]]) -> str:
    lines = [
        "| tree | row | device | samples/s (median) | real / in-memory | real / in-memory augmented "
        "| GPU utilisation |",
        "|---|---|---|---|---|---|---|",
    ]
    for tree, rows in results.items():
        for device in ("cpu", "gpu"):
            measured = {name: values for name, values in rows.items() if name.endswith(f"@{device}")}
            if not measured:
                lines.append(f"| {tree} | all rows | {device} | not measured | | | |")
                continue
            for name, values in measured.items():
                rate = statistics.median(r["samples/s"] for r in values)
                row = name.split("@")[0]
                ratios = ["", ""]
                if row.startswith("real"):
                    group = INTERLEAVED if row.endswith(INTERLEAVED) else ""
                    for column, step in enumerate(("in-memory step", AUGMENTED_STEP)):
                        ratios[column] = paired_ratio(values, measured.get(f"{step}{group}@{device}"))
                utils = [r["utilisation %"] for r in values if r.get("utilisation %") is not None]
                util = f"{statistics.median(utils):.0f} %" if utils else ""
                lines.append(
                    f"| {tree} | {row} | {device} | {rate:,.0f} | {ratios[0]} | {ratios[1]} | {util} |"
                )
    return "\n".join(lines)


def paired_ratio(values: list[dict], steps: list[dict] | None) -> str:
    """The median over repeats of a row's rate over the step's rate in the same repeat (one child
    measured both, minutes apart at most, where repeats can be a machine's quiet and busy hours)."""
    if not steps:
        return ""
    ratios = [value["samples/s"] / step["samples/s"] for value, step in zip(values, steps, strict=True)]
    return f"{statistics.median(ratios):.2f}"


def draw_picture(path: Path, trees: dict[str, dict]) -> None:
    import cv2
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(trees)
    grids = {name: np.array(tree["images"], dtype=np.uint8) for name, tree in trees.items()}
    originals = np.array(next(iter(trees.values()))["originals"], dtype=np.uint8)
    per_sample = len(PICTURE_SEEDS) * len(names) + 1
    columns = len(PICTURE_SAMPLES) * per_sample
    fig, axes = plt.subplots(len(FAMILIES), columns, figsize=(columns * 0.9, len(FAMILIES) * 0.95))
    for r, (_, member) in enumerate(FAMILIES):
        for s in range(len(PICTURE_SAMPLES)):
            cells = [("sample", originals[s])] + [
                (f"{name} #{k + 1}", grids[name][r, s * len(PICTURE_SEEDS) + k])
                for name in names
                for k in range(len(PICTURE_SEEDS))
            ]
            for c, (title, image) in enumerate(cells):
                ax = axes[r, s * per_sample + c]
                ax.imshow(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
                ax.set_xticks([]), ax.set_yticks([])
                if r == 0:
                    ax.set_title(title, fontsize=6)
                if c == 0 and s == 0:
                    ax.set_ylabel(member.replace("_", " "), fontsize=7)
    title = f"The recipe's transform families, one at a time, on demo training samples: {' vs '.join(names)}"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"picture: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--cache-dir", help="default: results/<config name>/cache")
    parser.add_argument("--compare", metavar="REV", help="also measure the library as at this git revision")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=150, help="timed steps per fit row (after 20 warm-up)")
    parser.add_argument(
        "--compile",
        nargs="*",
        default=["default"],
        metavar="MODE",
        help="torch.compile modes whose in-memory step this tree also measures (none: [])",
    )
    parser.add_argument("--picture", type=Path, help="write the side-by-side picture here (needs --compare)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, config, cache_dir, *rest = args.child
        if kind == "picture":
            print(json.dumps(child_picture(config, cache_dir)))
        else:
            print(json.dumps(child_measure(config, cache_dir, int(rest[0]), rest[1], rest[2:])))
        return

    cache_dir = args.cache_dir or f"results/{Path(args.config).stem}/cache"
    if args.steps < BLOCK:
        parser.error(f"--steps must be at least {BLOCK}: each interleaved row needs a timed block of its own")
    if not Path(args.config).is_file():
        parser.error(f"no config file {args.config}")
    if not Path(cache_dir, "summary.json").is_file():
        how = (
            "a --cache-dir that holds one"
            if args.cache_dir
            else f"`snakemake --cores 2 {cache_dir}/summary.json` first"
        )
        parser.error(f"no prepared cache in {cache_dir} (no summary.json): {how}")
    import torch

    devices = ["cpu"] + (["gpu"] if torch.cuda.is_available() else [])
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": ROOT / "src"}
        if args.compare:
            trees = {args.compare: files_at(args.compare, Path(tmp), "src") / "src", **trees}
        if args.picture:
            pictures = {name: in_child(src, "picture", args.config, cache_dir) for name, src in trees.items()}
            draw_picture(args.picture, pictures)
        results: dict[str, dict[str, list]] = {name: {} for name in trees}
        for repeat in range(args.repeats):
            for name, src in trees.items():
                for device in devices:
                    modes = args.compile if name == "this tree" else []
                    rows = in_child(src, "measure", args.config, cache_dir, str(args.steps), device, *modes)
                    for row, value in rows.items():
                        results[name].setdefault(f"{row}@{device}", []).append(value)
                    print(f"repeat {repeat + 1}, {name}, {device}: {rows}", flush=True)
    print(f"\n{args.config}, {args.steps} timed steps a row, {args.repeats} repeats, configured threads")
    print(table(results))


if __name__ == "__main__":
    main()
