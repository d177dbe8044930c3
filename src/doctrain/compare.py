"""One table for many experiments: what differs between them and how each model did.

Everything comes from the results, not from the configs as they are now: the settings are the ones
each stage recorded in its stamp when it ran (`built_from`, doctrain.integrity), the figures those
of evaluation.json (the shipped ONNX on every validation pair), metrics.json (training) and
parity.json (the exported file against PyTorch)."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path

import pandas as pd

from doctrain import _io, integrity, plots
from doctrain.fingerprint import dotted_settings
from doctrain.metrics import FPR_TARGETS

FILES = ("evaluation", "metrics", "parity")
STYLE = (
    "body{font:13px sans-serif}table{border-collapse:collapse}td,th{padding:2px 8px;"
    "border-bottom:1px solid #ddd;text-align:right}tr:hover{background:#f4f4f4}"
    "td:first-child{text-align:left;white-space:nowrap}"
)
Chosen = dict[str, tuple[str, dict]]  # experiment -> its data owner and its config


def _read(path: str) -> dict:
    return integrity.read_record(path) or {}


def built_settings(exp: str, owner: str, config: dict) -> dict:
    """The settings, by dotted key, that each stage of `exp` ran with; for a stage that has not
    run, those it would run with."""
    settings = {}
    for stage, stamp in integrity.chain(exp, owner)[1:]:
        recorded = _read(stamp).get("built_from", {}).get("settings")
        settings.update(recorded if isinstance(recorded, dict) else dotted_settings(config, stage))
    return settings


def row(exp: str) -> dict:
    evaluation, metrics, parity = (_read(f"results/{exp}/{name}.json") for name in FILES)
    val = evaluation.get("val")
    if not val:
        return {"experiment": exp, "status": "not built"}
    beats = val["against_baseline"]
    out = {
        "experiment": exp,
        "status": "built",
        "auroc": round(val["auroc"], 4),
        "auroc_95": "[{:.3f}, {:.3f}]".format(*val["auroc_95"]) if val.get("auroc_95") else "",
        "baseline_auroc": round(val["baseline"]["auroc"], 4),
        "beats_baseline": " & ".join(f for f in beats if beats[f]["beats"]) or "no",
    }
    for figure, lead in beats.items():  # model minus baseline on the same pairs, with its interval
        interval = lead["difference_95"]
        out[f"lead_{figure}"] = f"{lead['difference']:+.3f}" + (
            " [{:+.3f}, {:+.3f}]".format(*interval) if interval else ""
        )
    for target in FPR_TARGETS:
        entry = val["at_fpr"][f"{target:g}"]
        out[f"tpr@{target:g}"] = round(entry["tpr"], 4) if entry["resolvable"] else None
        out[f"threshold@{target:g}"] = round(entry["threshold"], 4) if entry["resolvable"] else None
    train = metrics.get("train", {})
    out.update(
        epoch=metrics.get("selected", {}).get("epoch"),
        train_s=train.get("seconds"),
        samples_per_s=train.get("samples_per_s"),
        parity="passed" if parity.get("passed") else "failed",
    )
    return out


def table(experiments: Chosen, sort: str | None = None) -> tuple[pd.DataFrame, list[str]]:
    """One row per experiment (name -> its data owner and config), with the settings that differ
    between them first; and the names of those settings."""
    settings = pd.DataFrame([built_settings(exp, *owner_config) for exp, owner_config in experiments.items()])
    differing = [
        key
        for key in settings.columns
        if settings[key].map(lambda v: json.dumps(v, sort_keys=True)).nunique(dropna=False) > 1
    ]
    figures = pd.DataFrame([row(exp) for exp in experiments])
    frame = pd.concat([figures[["experiment"]], settings[differing], figures.iloc[:, 1:]], axis=1)
    if sort:
        if sort not in frame.columns:
            raise KeyError(sort)
        ascending = sort == "experiment" or sort in differing
        frame = frame.sort_values(sort, ascending=ascending, na_position="last", kind="stable")
    return frame, differing


def _blanks(frame: pd.DataFrame) -> pd.DataFrame:
    """Missing figures (a rate the pairs cannot resolve, an experiment not built) as empty cells."""
    return frame.astype(object).where(frame.notna(), "")


def markdown(frame: pd.DataFrame) -> str:
    return _blanks(frame).to_markdown(index=False, floatfmt="g") + "\n"


def write(
    experiments: Chosen, title: str, csv: Path, md: Path, html: Path, roc_png: Path, sort: str | None
) -> None:
    """The table as CSV (for tools), Markdown (to read), HTML (for the Snakemake report), and the
    experiments' validation ROC curves overlaid."""
    frame, differing = table(experiments, sort)
    differ = f"Settings that differ: {', '.join(differing) or 'none'}."
    _io.write_text_atomic(csv, frame.to_csv(index=False))
    _io.write_text_atomic(md, f"# {title}\n\n{differ}\n\n" + markdown(frame))
    _io.write_text_atomic(
        html,
        f"<!doctype html><meta charset='utf-8'><title>{escape(title)}</title><style>{STYLE}</style>"
        f"<h1>{escape(title)}</h1><p>{escape(differ)}</p>" + _blanks(frame).to_html(index=False, border=0),
    )
    curves = {
        exp: val for exp in frame["experiment"] if (val := _read(f"results/{exp}/evaluation.json").get("val"))
    }
    plots.roc_overlay(curves, title, roc_png)
