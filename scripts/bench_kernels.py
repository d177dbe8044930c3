"""What pinning a deterministic CPU training's kernels costs: the demo's training on its prepared
cache with trainer.cpu_kernels avx2 (the default) and native, alternating, each in a process of
its own (torch chooses its kernels once per process). Prints a table: samples/s of each run, the
weights' digest, and the ratio of the medians. Own the machine while it runs.

    python scripts/bench_kernels.py [--config configs/demo.yaml] [--samples 2048] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = """
import json, sys, tempfile
from doctrain import training
from doctrain.config import read_yaml, validate_config
from doctrain.fingerprint import stage_settings
settings = stage_settings(validate_config(read_yaml(sys.argv[1]), sys.argv[1]), "train")
settings["trainer"]["cpu_kernels"] = sys.argv[3]
settings["data"]["samples_per_epoch"] = int(sys.argv[4])
settings["schedule"]["epochs"] = 1
with tempfile.TemporaryDirectory() as work:
    result = training.train(settings, sys.argv[2], work)
print("RESULT", json.dumps({"speed": result["train"]["samples_per_s"], "sha": result["state_dict_sha256"],
                            "isa": result["train"]["kernels"]["cpu_isa"]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--cache-dir", help="default: results/<config name>/cache")
    parser.add_argument("--samples", type=int, default=2048, help="training samples per run")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    cache = args.cache_dir or f"results/{Path(args.config).stem}/cache"
    speeds: dict[str, list[float]] = {"avx2": [], "native": []}
    print(f"{'run':>4} {'cpu_kernels':>11} {'ISA':>7} {'samples/s':>10}  weights")
    for round_ in range(args.rounds):
        for kernels in speeds:
            done = subprocess.run(
                [sys.executable, "-c", RUN, args.config, cache, kernels, str(args.samples)],
                capture_output=True,
                text=True,
                cwd=ROOT,
                check=True,
            )
            result = json.loads(done.stdout.split("RESULT ", 1)[1])
            speeds[kernels].append(result["speed"])
            row = f"{round_ + 1:>4} {kernels:>11} {result['isa']:>7} {result['speed']:>10.1f}"
            print(f"{row}  {result['sha'][:12]}")
    pinned, native = (statistics.median(speeds[k]) for k in ("avx2", "native"))
    print(f"median samples/s: avx2 {pinned:.1f}, native {native:.1f}; avx2 / native = {pinned / native:.2f}")


if __name__ == "__main__":
    main()
