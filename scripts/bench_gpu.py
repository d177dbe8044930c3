"""GPU training benchmark: what the step takes, compiled or not, and does the loader keep up?

On the prepared cache of an experiment (by default the reference recipe, after
`snakemake results/lcnet050_cosface_96/cache/summary.json`), measures side by side in one run:
  loader      the experiment's training DataLoader alone (read, draw the augmentation, collate),
              per worker count;
  augmentation  doctrain.augment.apply alone on the device, on as many distinct real batches as
              steps (new shapes keep coming, as in a training's first steps), per MODE:WAY (WAY:
              rows, each transform on its own rows, or whole, over the whole batch);
  gpu step    Lightning fit steps on the loader's first batch kept pinned in memory (its
              augmentation still runs on the GPU each step; `clean`: augmentation off), per
              MODE:PRECISION[:channels_last][:clean] (MODE is trainer.compile): what the GPU consumes;
  end to end  Lightning fit steps on the real loader with --e2e-workers workers, per MODE:PRECISION.
Prints one table: samples/s, peak GPU memory, mean GPU utilisation, and each row's ratio to the
first gpu step row; with --json PATH also writes the rows there. The loader keeps up where an end
to end row comes near its gpu step row.

    python scripts/bench_gpu.py [--config configs/lcnet050_cosface_96.yaml] [--cache-dir DIR]
        [--steps 150] [--workers 4 8] [--augment none:rows none:whole ...]
        [--gpu-steps none:32 reduce-overhead:32 ...]
        [--end-to-end none:32 reduce-overhead:32] [--e2e-workers 8] [--json rows.json]
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import json
import sys
import time
from pathlib import Path

import torch
from lightning.fabric.utilities import move_data_to_device
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from benchlib import WARMUP_STEPS, fit_rate  # noqa: E402

from doctrain import augment  # noqa: E402
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


def augment_rate(loader, spec: str, steps: int, device: torch.device) -> dict:
    """Samples/s of augment.apply alone, `spec` MODE:WAY, on WARMUP_STEPS + `steps` distinct batches
    moved to the device first (cuDNN tuning on the device as in a training)."""
    mode, way = spec.split(":")
    if way not in ("rows", "whole"):
        sys.exit(f"bench_gpu: --augment {spec}: WAY is rows or whole")
    batches = [move_data_to_device(batch, device) for batch in itertools.islice(loader, WARMUP_STEPS + steps)]
    apply = functools.partial(augment.apply, whole_batch=way == "whole")
    if mode != "none":
        torch._dynamo.reset()
        augment.constants_to(device)
        apply = torch.compile(apply, mode=mode)
    torch.backends.cudnn.benchmark = device.type == "cuda"

    def synchronise() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def run(batches) -> None:
        for pixels, _, params in batches:
            torch.compiler.cudagraph_mark_step_begin()
            apply(pixels, params)

    run(batches[:WARMUP_STEPS])
    synchronise()
    started = time.perf_counter()
    run(batches[WARMUP_STEPS:])
    synchronise()
    return {"samples/s": steps * len(batches[0][0]) / (time.perf_counter() - started)}


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
    parser.add_argument("--steps", type=int, default=150, help="timed steps per row (after 20 warm-up)")
    parser.add_argument("--workers", type=int, nargs="*", default=[4, 8], help="loader rows")
    parser.add_argument(
        "--augment",
        nargs="*",
        default=["none:rows", "none:whole", "reduce-overhead:whole"],
        help="MODE:WAY rows of the augmentation alone (WAY: rows or whole)",
    )
    parser.add_argument(
        "--gpu-steps",
        nargs="*",
        default=[
            "none:32",
            "none:32:clean",
            "none:bf16-mixed",
            "reduce-overhead:32",
            "reduce-overhead:bf16-mixed",
        ],
        help="MODE:PRECISION[:channels_last][:clean] rows of the step on a resident batch",
    )
    parser.add_argument(
        "--end-to-end",
        nargs="*",
        default=["none:32", "reduce-overhead:32"],
        help="MODE:PRECISION rows of the step on the real loader",
    )
    parser.add_argument("--e2e-workers", type=int, default=8, help="loader workers of the end to end rows")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--accelerator", default="gpu", help="cpu: try the script where no GPU is")
    args = parser.parse_args()
    if args.accelerator == "gpu" and not torch.cuda.is_available():
        sys.exit(
            "bench_gpu: no CUDA device visible; run it on a GPU machine (or try it with --accelerator cpu)."
        )

    settings = stage_settings(load_config(args.config), "train")
    # A benchmark epoch long enough for warm-up + timed steps, whatever the config's epoch length.
    settings["data"]["samples_per_epoch"] = (WARMUP_STEPS + args.steps + 1) * settings["data"]["batch_size"]
    cache = Cache(args.cache_dir or f"results/{Path(args.config).stem}/cache")
    num_classes = int(cache.split("train")["class_id"].max()) + 1
    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else "CPU"
    print(
        f"{device} | torch {torch.__version__} | {args.config} | "
        f"batch {settings['data']['batch_size']} | {cache.images.shape[1]} px | "
        f"{num_classes} classes | {args.steps} timed steps per row",
        flush=True,
    )

    def changed(workers: int, augment: bool = True) -> dict:
        settings_now = copy.deepcopy(settings)
        settings_now["data"]["loader"]["num_workers"] = workers
        settings_now["augment"]["enabled"] = augment
        return settings_now

    rows = []

    def record(name: str, measured: dict) -> None:
        rows.append({"measurement": name, **measured})
        print(rows[-1], flush=True)
        if args.json:  # row by row: a run cut short keeps what it measured
            args.json.write_text(json.dumps(rows, indent=1))

    for workers in args.workers:
        record(
            f"loader, {workers} workers",
            {"samples/s": loader_rate(loaders(cache, changed(workers))[0], args.steps)},
        )
    device = torch.device("cuda" if args.accelerator == "gpu" else "cpu")
    for spec in args.augment:
        loader = loaders(cache, changed(args.e2e_workers))[0]
        record(f"augmentation alone, {spec}", augment_rate(loader, spec, args.steps, device))
    for spec in args.gpu_steps:
        mode, precision, *flags = spec.split(":")
        batches = resident_batches(loaders(cache, changed(0, augment="clean" not in flags))[0], args.steps)
        measured = fit_rate(
            settings,
            batches,
            num_classes,
            args.steps,
            args.accelerator,
            precision=precision,
            channels_last="channels_last" in flags,
            compile_mode=mode,
        )
        record(f"gpu step, {spec}", measured)
    for spec in args.end_to_end:
        mode, precision = spec.split(":")
        loader = loaders(cache, changed(args.e2e_workers))[0]
        measured = fit_rate(
            settings,
            loader,
            num_classes,
            args.steps,
            args.accelerator,
            precision=precision,
            compile_mode=mode,
        )
        record(f"end to end, {spec}, {args.e2e_workers} workers", measured)

    reference = next((row for row in rows if row["measurement"].startswith("gpu step")), rows[0])
    print(f"\n| measurement | samples/s | peak GPU MiB | GPU utilisation % | × {reference['measurement']} |")
    print("|---|---|---|---|---|")
    for row in rows:
        memory, busy = row.get("peak MiB"), row.get("utilisation %")
        memory, busy = ("" if memory is None else f"{memory:,.0f}"), ("" if busy is None else f"{busy:.0f}")
        ratio = row["samples/s"] / reference["samples/s"]
        print(f"| {row['measurement']} | {row['samples/s']:,.0f} | {memory} | {busy} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
