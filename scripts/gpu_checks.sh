#!/usr/bin/env bash
# The GPU checks of a machine lent for a few minutes, in the order of what they are worth, each
# within the time left, everything written to OUT as it comes (a run cut short still tells):
#   1. the augmentation tests that need a GPU (no waits; compiled into CUDA graphs);
#   2. the reference recipe's cache, built by snakemake (its stage timings in the benchmarks folder);
#   3. scripts/bench_gpu.py, the rows that decide the recipe's run: the augmentation alone (each
#      transform on its rows, over the whole batch, compiled), the compiled step without
#      augmentation, the compiled step end to end;
#   4. the recipe end to end by snakemake (its configured compile mode and loader workers): all its
#      epochs where the measured rate fits them in the time left, else as many as fit (the log says
#      so), then export, parity and evaluation;
#   5. with time left: the other step rows, mixed precision and channels_last.
#
#   scripts/gpu_checks.sh OUT SECONDS
# (RECIPE=smoke ACCELERATOR=cpu tries the script's logic on a CPU with the smoke config.)
set -uo pipefail
if [ $# -ne 2 ] || ! [ "$2" -gt 0 ] 2>/dev/null; then
    echo "usage: scripts/gpu_checks.sh OUT SECONDS (a folder for the results, the seconds the machine is lent for)" >&2
    exit 2
fi
out=$1
budget=$2
started=$SECONDS
recipe=${RECIPE:-lcnet050_cosface_96}
accelerator=${ACCELERATOR:-gpu}
left() { echo $((budget - (SECONDS - started))); }
# The time left but `keep` seconds, at least 1 (timeout refuses 0 and less).
until_last() { local seconds=$(($(left) - $1)); echo $((seconds > 1 ? seconds : 1)); }
say() { echo "[$((SECONDS - started)) s] $*" | tee -a "$out/summary.txt"; }

mkdir -p "$out"
say "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader) | $(nproc) cores"
say "$(python -c 'import sys, torch, lightning, timm, snakemake; print(sys.version.split()[0], "torch", torch.__version__, "lightning", lightning.__version__, "timm", timm.__version__, "snakemake", snakemake.__version__)')"

PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" python -m pytest -q -p no:cacheprovider tests/test_augment.py -k "never_waits or batchmates or whole_batch or cuda_graphs" >"$out/test.log" 2>&1
say "augment tests on the GPU: $(tail -1 "$out/test.log")"

snakemake --cores "$(nproc)" --scheduler greedy "results/$recipe/cache/summary.json" >"$out/cache.log" 2>&1
say "recipe cache: rc $? ($(tail -1 "$out/cache.log"))"

# The rows that decide the recipe's run first (~100 s on an H200, compilation included); the others
# after it.
bench_limit=$(until_last 200)
timeout $((bench_limit < 180 ? bench_limit : 180)) python scripts/bench_gpu.py --accelerator "$accelerator" --config "configs/$recipe.yaml" \
    --json "$out/bench.json" --steps 120 --workers \
    --augment none:rows none:whole reduce-overhead:whole --gpu-steps reduce-overhead:32:clean \
    --end-to-end reduce-overhead:32 \
    >"$out/bench.log" 2>&1
say "bench_gpu: rc $?"
grep -E "^\|" "$out/bench.log" | tee -a "$out/summary.txt"

# The faster compile mode end to end, and as many of the recipe's epochs as its rate fits in the time
# left (kept back: ~120 s for compiling, validation and the stages after the training). The compiled
# training ran at ~0.75x the benchmark's end to end row on an H200 (eager at ~1.0x), hence the 0.7.
read -r mode epochs configured < <(python - "$out/bench.json" "$(left)" "configs/$recipe.yaml" <<'EOF'
import json, sys, yaml
rows_file, left, config = sys.argv[1], int(sys.argv[2]), yaml.safe_load(open(sys.argv[3]))
try:
    rows = [r for r in json.load(open(rows_file)) if r["measurement"].startswith("end to end")]
except OSError:
    rows = []
best = max(rows, key=lambda r: r["samples/s"], default={"measurement": "end to end, none:32", "samples/s": 8000})
epoch_s = config["data"]["samples_per_epoch"] / (0.7 * best["samples/s"]) + 3
configured = config["schedule"]["epochs"]
print(best["measurement"].split(", ")[1].split(":")[0], max(0, min(configured, int((left - 120) / epoch_s))), configured)
EOF
)
overrides="trainer.compile=$mode"
[ "$epochs" -lt "$configured" ] && overrides="$overrides schedule.epochs=$epochs"
say "recipe end to end: $overrides ($(left) s left)"
if [ "$epochs" -ge 1 ]; then
    timeout $(until_last 15) snakemake "results/$recipe.onnx" "results/$recipe/evaluation.json" \
        --cores "$(nproc)" --scheduler greedy --resources gpu=1 --config overrides="$overrides" \
        >"$out/recipe.log" 2>&1
    say "recipe: rc $?"
fi
python - "results/$recipe" <<'EOF' | tee -a "$out/summary.txt"
import json, sys
from pathlib import Path
folder = Path(sys.argv[1])
for name in ("metrics.json", "evaluation.json", "parity.json"):
    if (folder / name).exists():
        print(name, json.dumps(json.loads((folder / name).read_text()))[:1500])
for bench in sorted((folder / "benchmarks").glob("*")):
    print(bench.name, bench.read_text().splitlines()[-1][:80])
EOF
if [ "$(left)" -gt 100 ]; then
    timeout $(until_last 20) python scripts/bench_gpu.py --accelerator "$accelerator" --config "configs/$recipe.yaml" \
        --json "$out/bench_precision.json" --steps 120 \
        --workers 8 --augment --end-to-end --gpu-steps reduce-overhead:32 none:32 none:32:clean \
        reduce-overhead:32:channels_last reduce-overhead:bf16-mixed >"$out/bench_precision.log" 2>&1
    say "bench_gpu, the other rows: rc $?"
    grep -E "^\|" "$out/bench_precision.log" | tee -a "$out/summary.txt"
fi
tar czf "$out/results.tar.gz" --exclude='*/cache/*' --exclude='*/work/*' --exclude='*.ckpt' \
    "results/$recipe" "results/$recipe.onnx" .snakemake/log 2>/dev/null
say "done"
