"""No-op planning benchmark: is content hashing cheap enough to run on every invocation?

Builds, in a temporary copy of the workflow, 20 experiment configs over one generated manifest of
100,000 small images, makes each experiment's dataset fingerprint for real (this hashes every image
once), then times, side by side and alternating:
  trivial    `snakemake -n` of a one-rule Snakefile (Snakemake's own start-up);
  no-op      `snakemake -n` of the 20 fingerprint targets: every config validated, every stage's
             code digested, and the 100,000 files stat-ed against the hash cache; nothing to do.
  plan all   `snakemake -n` of the 20 ONNX targets: the same, plus planning 120 jobs.
With --sweep N (default 100), the same two in a copy that also holds a sweep of N experiments over
exp00 (configs/sweeps/bench.yaml, N learning rates; N more configs validated, their chains of
stamps checked), whose `plan` is the sweep's compare table: N trainings and their steps.
Prints a table with medians, the time over trivial and the ratio to it (targets, issue 25: the
no-op at most 0.5 s over trivial, planning the sweep's table at most 2x trivial).
With --compare REV, the same two invocations of the workflow as it was at git revision REV run
alternating with these, over the same data, so a change is judged side by side in one run.

    python scripts/bench_noop.py [--images 100000] [--experiments 20] [--sweep 100] [--repeats 5]
                                 [--compare REV]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchlib import files_at  # noqa: E402

from tests.conftest import WORKFLOW_PARTS, copy_workflow  # noqa: E402

TRIVIAL = 'rule all:\n    output: "trivial.txt"\n    shell: "touch {output}"\n'


def make_dataset(root: Path, images: int) -> Path:
    """Tiny distinct PNG-signature files (content hashing cost depends on count, not on pixels)."""
    rng = np.random.default_rng(0)
    lines = ["path,label,split"]
    for i in tqdm(range(images), desc="bench: writing files", unit="file", mininterval=1):
        rel = f"img/{i // 1000:03d}/{i:06d}.png"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rng.bytes(64))
        label = i % 2000
        lines.append(f"{rel},c{label},{'val' if label % 5 == 0 else 'train'}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def run(cmd: list[str], cwd: Path) -> float:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{result.stdout[-2000:]}{result.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--experiments", type=int, default=20)
    parser.add_argument("--sweep", type=int, default=100, help="experiments in the sweep (0: none)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="build the workspace here and keep it (to profile)")
    parser.add_argument("--compare", metavar="REV", help="also time the workflow as at this git revision")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="doctrain-bench-") as scratch:
        tmp = args.keep or Path(scratch)
        workdirs = {"": copy_workflow(tmp / "workflow")}
        if args.compare:
            workdirs[f" ({args.compare})"] = files_at(args.compare, tmp / "baseline", *WORKFLOW_PARTS)
        if args.sweep:
            workdirs[f", + sweep of {args.sweep}"] = copy_workflow(tmp / "sweep")
        manifest = make_dataset(tmp / "data", args.images)
        base = yaml.safe_load(ROOT.joinpath("configs/smoke.yaml").read_text())
        base["data"].pop("synth")
        base["data"]["manifest"] = str(manifest)
        for workdir in workdirs.values():
            for path in (workdir / "configs").glob("**/*.yaml"):
                path.unlink()
            for i in range(args.experiments):
                base["optimizer"]["lr"] = 1.0e-3 * (i + 1)
                (workdir / "configs" / f"exp{i:02d}.yaml").write_text(yaml.safe_dump(base))
        fingerprints = [f"results/exp{i:02d}/dataset.fingerprint.json" for i in range(args.experiments)]
        plans = {label: [f"results/exp{i:02d}.onnx" for i in range(args.experiments)] for label in workdirs}
        if args.sweep:
            label = f", + sweep of {args.sweep}"
            rates = [round(1.0e-4 * (i + 1), 6) for i in range(args.sweep)]
            sweep = {"base": "exp00", "grid": {"optimizer.lr": rates}}
            (workdirs[label] / "configs" / "sweeps" / "bench.yaml").write_text(yaml.safe_dump(sweep))
            plans[label] = ["results/compare/bench.md"]
        snakemake = [sys.executable, "-m", "snakemake", "--cores", "2"]
        trivial = tmp / "trivial"
        trivial.mkdir()
        (trivial / "Snakefile").write_text(TRIVIAL)

        started = time.perf_counter()
        run([*snakemake, *fingerprints], workdirs[""])
        first = time.perf_counter() - started
        for workdir in list(workdirs.values())[1:]:
            run([*snakemake, *fingerprints], workdir)

        times: dict[str, list[float]] = {"trivial": []}
        for _ in range(args.repeats):
            times["trivial"].append(run([*snakemake, "-n"], trivial))
            for label, workdir in workdirs.items():
                times.setdefault(f"no-op{label}", []).append(run([*snakemake, "-n", *fingerprints], workdir))
                times.setdefault(f"plan{label}", []).append(run([*snakemake, "-n", *plans[label]], workdir))

    median = {name: statistics.median(values) for name, values in times.items()}
    print(
        f"\n{args.experiments} experiments over {args.images:,} images; first fingerprinting "
        f"(hashes every file, {args.experiments} jobs): {first:.1f} s; medians of {args.repeats} runs\n"
    )
    print("| invocation | median s | min s | over trivial s | × trivial |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        over, ratio = median[name] - median["trivial"], median[name] / median["trivial"]
        print(f"| {name} | {median[name]:.2f} | {min(values):.2f} | {over:.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
