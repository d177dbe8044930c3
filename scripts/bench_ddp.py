"""What DDP costs: the real doctrain training of an experiment, as one plain process and as one DDP
rank on the same device, alternating, side by side in one run.

On the prepared cache of an experiment (by default the reference recipe's), each row is one call of
doctrain.training.train with the config's training settings, `--samples` samples an epoch for
`--epochs` epochs (validation after each included, as in a real run), the plain and the DDP run
alternating `--repeats` times. Prints one table: samples/s end to end, seconds, the selected
validation AUROC, and each row's ratio to the plain runs' median.

    python scripts/bench_ddp.py [--config configs/lcnet050_cosface_96.yaml] [--cache-dir DIR]
        [--samples 128000] [--epochs 1] [--repeats 2] [--workers N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from doctrain import training  # noqa: E402
from doctrain.config import load_config  # noqa: E402
from doctrain.fingerprint import stage_settings  # noqa: E402

VARIANTS = {"plain, 1 device": "auto", "DDP, 1 rank": "ddp"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/lcnet050_cosface_96.yaml")
    parser.add_argument("--cache-dir", help="default: results/<config name>/cache")
    parser.add_argument("--samples", type=int, default=128_000, help="training samples an epoch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each variant, alternating")
    parser.add_argument("--workers", type=int, help="loader workers (default: the config's)")
    args = parser.parse_args()

    settings = stage_settings(load_config(args.config), "train")
    settings["data"]["samples_per_epoch"] = args.samples
    settings["schedule"]["epochs"] = args.epochs
    if args.workers is not None:
        settings["data"]["loader"]["num_workers"] = args.workers
    cache_dir = args.cache_dir or f"results/{Path(args.config).stem}/cache"
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for repeat in range(args.repeats):
            for name, strategy in VARIANTS.items():
                settings["trainer"]["strategy"] = strategy
                result = training.train(settings, cache_dir, Path(work, f"{strategy}-{repeat}"), name)
                rows.append((name, result["train"], result["val"]["auroc"]))
                print(rows[-1], flush=True)

    plain = statistics.median(speed["samples_per_s"] for name, speed, _ in rows if name.startswith("plain"))
    device = rows[0][1]["device"]
    print(f"\n{args.config}: {args.samples:,} samples x {args.epochs} epochs a run, on {device}")
    print("| run | samples/s | seconds | val AUROC | x plain median |")
    print("|---|---|---|---|---|")
    for name, speed, auroc in rows:
        print(
            f"| {name} | {speed['samples_per_s']:,.0f} | {speed['seconds']:.1f} | {auroc:.3f} | "
            f"{speed['samples_per_s'] / plain:.2f} |"
        )


if __name__ == "__main__":
    main()
