"""Which settings learn: variants of one experiment, trained on its prepared cache, each scored
against the raw-pixel baseline on the same validation pairs. A study tool (issue 12), not a test.

Each `--variant` is overrides of the config as `--config overrides=...` takes them ("" is the
config itself). Each variant is trained with doctrain.training.train (validation and the choice of
epoch as in the pipeline); its selected epoch then embeds every validation image, and every pair is
scored as `doctrain evaluate` scores the shipped ONNX file: AUROC and TPR at FPR 1e-2 with 95 %
bootstrap intervals, and the lead over the raw-pixel baseline with the interval of the paired
differences. The figures are the PyTorch module's, before export; quote the pipeline's evaluation
of a setting you adopt.

    python scripts/study.py --config configs/demo.yaml [--cache-dir results/demo/cache]
        [--accelerator gpu] [--workers N] [--resamples N] --variant "" --variant "loss.m=0.3" ...
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from doctrain import training  # noqa: E402
from doctrain.cache import Cache  # noqa: E402
from doctrain.config import parse_overrides, read_yaml, validate_config, with_overrides  # noqa: E402
from doctrain.evaluation import compare, embed_split, split_metrics  # noqa: E402
from doctrain.fingerprint import stage_settings  # noqa: E402


def _figure(value: float, interval: list[float] | None, signed: bool = False) -> str:
    text = f"{value:+.3f}" if signed else f"{value:.3f}"
    if interval:
        low, high = (f"{v:+.3f}" if signed else f"{v:.3f}" for v in interval)
        text += f" [{low}, {high}]"
    return text


def score(module, cache: Cache, resamples: int, seed: int) -> dict:
    """The module's and the baseline's figures on every validation pair, and the lead."""
    module = module.eval()

    @torch.no_grad()
    def embed(inputs):
        return torch.nn.functional.normalize(module(torch.from_numpy(inputs)), dim=1).numpy()

    embedded = embed_split(embed, cache, "val")
    both = split_metrics(
        {"model": embedded["model"], "baseline": embedded["baseline"]},
        embedded["labels"],
        resamples,
        seed,
        "val",
    )
    return {**both, "lead": compare(both["model"], both["baseline"])}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--cache-dir", help="default: results/<config name>/cache")
    parser.add_argument("--variant", action="append", default=[], help="overrides, e.g. 'loss.m=0.3'")
    parser.add_argument("--accelerator", help="train on this accelerator instead of the config's (gpu, cpu)")
    parser.add_argument("--workers", type=int, help="loader workers (default: the config's)")
    parser.add_argument("--resamples", type=int, help="bootstrap draws (default: the config's)")
    args = parser.parse_args()

    raw = read_yaml(args.config)
    cache_dir = args.cache_dir or f"results/{Path(args.config).stem}/cache"
    cache = Cache(cache_dir)
    table = [
        "| variant | AUROC | TPR@1e-2 | lead AUROC | lead TPR@1e-2 | epoch | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    with tempfile.TemporaryDirectory() as work:
        for number, variant in enumerate(args.variant or [""]):
            overrides = parse_overrides(variant, "--variant")
            if args.accelerator:
                overrides["trainer.accelerator"] = args.accelerator
            if args.workers is not None:
                overrides["data.loader.num_workers"] = args.workers
            source = f"{args.config} --variant {variant!r}"
            config = validate_config(with_overrides(raw, overrides, source), source)
            settings, evaluation = stage_settings(config, "train"), config["evaluation"]
            started = time.perf_counter()
            result = training.train(settings, cache_dir, Path(work, str(number)), f"variant {number}")
            # The evaluation's resamples and seed: every variant is scored on the same draws.
            resamples = args.resamples or evaluation["bootstrap_resamples"]
            figures = score(result["module"], cache, resamples, evaluation["seed"])
            model, lead, base = figures["model"], figures["lead"], figures["baseline"]
            tpr, tpr_lead = model["at_fpr"]["0.01"], lead.get("tpr@0.01")
            table.append(
                f"| {variant or '(config)'} | {_figure(model['auroc'], model['auroc_95'])} | "
                f"{_figure(tpr['tpr'], tpr['tpr_95'])} | "
                f"{_figure(lead['auroc']['difference'], lead['auroc']['difference_95'], True)} | "
                + (_figure(tpr_lead["difference"], tpr_lead["difference_95"], True) if tpr_lead else "n/a")
                + f" | {result['selected_epoch']} | {time.perf_counter() - started:.0f} |"
            )
            print("\n".join(table), flush=True)

    print(
        f"\n{args.config} on {result['train']['device']}; {base['images']} validation images of "
        f"{base['classes']} classes; raw-pixel baseline AUROC {_figure(base['auroc'], base['auroc_95'])}, "
        f"TPR@1e-2 {_figure(base['at_fpr']['0.01']['tpr'], base['at_fpr']['0.01']['tpr_95'])}"
    )
    print("\n".join(table))


if __name__ == "__main__":
    main()
