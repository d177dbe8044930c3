"""GPU training benchmark: does mixed precision pay, and does the data loader keep up?

On the prepared cache of an experiment (by default the reference recipe, after
`snakemake results/lcnet050_cosface_96/cache/summary.json`), measures side by side in one run:
  loader      the experiment's training DataLoader alone (read, augment, collate), per worker count;
  gpu step    Lightning fit steps of the experiment's model on batches already decoded and pinned,
              per precision (and channels_last): what the GPU can consume;
  end to end  Lightning fit steps on the real loader, per precision.
Prints one table: samples/s, peak GPU memory, and each row's ratio to the fp32 GPU step. The loader
keeps up where its samples/s exceed the GPU step's.

    python scripts/bench_gpu.py [--config configs/lcnet050_cosface_96.yaml] [--cache-dir DIR]
        [--steps 200] [--workers 4 8 16] [--precisions 32 bf16-mixed 16-mixed]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from benchlib import WARMUP_STEPS, fit_rate  # noqa: E402

from doctrain.cache import Cache  # noqa: E402
from doctrain.config import load_config  # noqa: E402
from doctrain.dataset import loaders  # noqa: E402
from doctrain.fingerprint import stage_settings  # noqa: E402


def loader_rate(loader, steps: int) -> float:
    batches = iter(loader)
    for _ in range(WARMUP_STEPS):
        next(batches)
    started = time.perf_counter()
    samples = sum(len(next(batches)[1]) for _ in range(steps))
    return samples / (time.perf_counter() - started)


def resident_batches(loader, steps: int) -> DataLoader:
    """The loader's first batch served pinned `steps` times: the GPU step (with the batch's
    augmentation, which runs on the GPU) without the CPU work."""
    batch = next(iter(loader))
    return DataLoader([batch] * (WARMUP_STEPS + steps), batch_size=None, pin_memory=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/lcnet050_cosface_96.yaml")
    parser.add_argument("--cache-dir", help="default: results/<config name>/cache")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per row (after 20 warm-up)")
    parser.add_argument("--workers", type=int, nargs="+", default=[4, 8, 16])
    parser.add_argument("--precisions", nargs="*", default=["32", "bf16-mixed", "16-mixed"])
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu: no CUDA device visible; run it on a GPU machine.")

    settings = stage_settings(load_config(args.config), "train")
    # A benchmark epoch long enough for warm-up + timed steps, whatever the config's epoch length.
    settings["data"]["samples_per_epoch"] = (WARMUP_STEPS + args.steps + 1) * settings["data"]["batch_size"]
    cache = Cache(args.cache_dir or f"results/{Path(args.config).stem}/cache")
    num_classes = int(cache.split("train")["class_id"].max()) + 1
    torch.backends.cudnn.benchmark = True
    configured_workers = settings["data"]["loader"]["num_workers"]
    print(
        f"{torch.cuda.get_device_name()} | torch {torch.__version__} | {args.config} | "
        f"batch {settings['data']['batch_size']} | {cache.images.shape[1]} px | "
        f"{num_classes} classes | {args.steps} timed steps per row",
        flush=True,
    )

    rows = []

    def with_workers(workers: int) -> dict:
        changed = copy.deepcopy(settings)
        changed["data"]["loader"]["num_workers"] = workers
        return changed

    for workers in args.workers:
        rate = loader_rate(loaders(cache, with_workers(workers))[0], args.steps)
        rows.append((f"loader, {workers} workers", rate, None))
        print(rows[-1], flush=True)
    train_loader = loaders(cache, settings)[0]
    for precision in args.precisions:
        for channels_last in (False, True):
            measured = fit_rate(
                settings,
                resident_batches(train_loader, args.steps),
                num_classes,
                args.steps,
                precision=precision,
                channels_last=channels_last,
            )
            rate, memory = measured["samples/s"], measured["peak MiB"]
            rows.append((f"gpu step, {precision}{', channels_last' if channels_last else ''}", rate, memory))
            print(rows[-1], flush=True)
    for precision in args.precisions:
        loader = loaders(cache, settings)[0]
        measured = fit_rate(settings, loader, num_classes, args.steps, precision=precision)
        rate, memory = measured["samples/s"], measured["peak MiB"]
        rows.append((f"end to end, {precision}, {configured_workers} workers", rate, memory))
        print(rows[-1], flush=True)

    reference_name, reference = next(
        ((name, rate) for name, rate, _ in rows if name == "gpu step, 32"), (rows[0][0], rows[0][1])
    )
    print(f"\n| {'measurement':<40} | samples/s | peak GPU MiB | × {reference_name} |")
    print(f"|{'-' * 42}|-----------|--------------|{'-' * (len(reference_name) + 4)}|")
    for name, rate, memory in rows:
        shown = "" if memory is None else f"{memory:,.0f}"
        print(
            f"| {name:<40} | {rate:9,.0f} | {shown:>12} | {rate / reference:{len(reference_name) + 2}.2f} |"
        )


if __name__ == "__main__":
    main()
