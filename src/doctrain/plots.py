"""Pictures people would rather look at than read: the ROC curve and the training curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from doctrain import _io  # noqa: E402


def roc_curves(curves: dict[str, tuple[dict, dict]], title: str, out: str | Path) -> None:
    """ROC curves on a log FPR axis (label -> (points, metrics)), the TPR at each reported FPR
    marked (a cross where the pairs cannot resolve that rate, a bar for its 95 % interval)."""
    fig, ax = plt.subplots(figsize=(6, 4.5 + 0.45 * len(curves)), dpi=110)
    for colour, (label, (points, metrics)) in enumerate(curves.items()):
        fpr = [max(f, 1e-5) for f in points["fpr"]]
        pairs = f"{metrics['positive_pairs']:,} same / {metrics['negative_pairs']:,} different pairs"
        low_high = metrics.get("auroc_95")
        interval = f" [{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else ""
        ax.plot(
            fpr,
            points["tpr"],
            lw=2,
            ls="--" if "baseline" in label else "-",
            color=f"C{colour}",
            label=f"{label}: AUROC {metrics['auroc']:.4f}{interval}\n{pairs}",
        )
        for target, entry in metrics["at_fpr"].items():
            style = "o" if entry["resolvable"] else "x"
            ax.plot(float(target), entry["tpr"], style, color=f"C{colour}")
            if entry.get("tpr_95"):  # the 95 % interval, where the evaluation measured one
                low, high = entry["tpr_95"]
                ax.vlines(float(target), low, high, color=f"C{colour}", lw=1, alpha=0.6)
            ax.annotate(
                f"{entry['tpr']:.3f}",
                (float(target), entry["tpr"]),
                textcoords="offset points",
                xytext=(4, 4 if entry["tpr"] < 0.9 else -12),
                fontsize=8,
            )
    _finish_roc(fig, ax, title, out, legend="below", fontsize=8)


def roc_overlay(curves: dict[str, dict], title: str, out: str | Path, legend_max: int = 12) -> None:
    """Many experiments' validation ROC on one log-FPR axis (name -> its evaluation figures, with
    `roc` and `baseline`), their raw-pixel baselines dashed in grey; the legend, best AUROC first,
    names the `legend_max` best."""
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    ranked = sorted(curves.items(), key=lambda item: -item[1]["auroc"])
    for rank, (name, figures) in enumerate(ranked):
        baseline = figures["baseline"]["roc"]
        ax.plot([max(f, 1e-5) for f in baseline["fpr"]], baseline["tpr"], lw=1, ls="--", color="0.6")
        ax.plot(
            [max(f, 1e-5) for f in figures["roc"]["fpr"]],
            figures["roc"]["tpr"],
            lw=1.5,
            color=plt.cm.viridis(rank / max(len(ranked) - 1, 1)),
            label=f"{name}: AUROC {figures['auroc']:.3f}" if rank < legend_max else None,
        )
    if ranked:
        ax.plot([], [], lw=1, ls="--", color="0.6", label="raw-pixel baselines")
    _finish_roc(
        fig, ax, f"{title}: {len(ranked)} experiment(s), validation, every pair", out, "upper left", 7
    )


def _finish_roc(fig, ax, title: str, out: str | Path, legend: str, fontsize: int) -> None:
    """The ROC figures' common axes: log FPR from 1e-5, TPR, a grid; then save. A legend "below"
    the axes leaves every marker visible (inside, it covered the low TPRs at FPR 1e-3)."""
    ax.set(
        xscale="log",
        xlim=(1e-5, 1),
        ylim=(0, 1.02),
        xlabel="false positive rate (different-class pairs)",
        ylabel="true positive rate (same-class pairs)",
        title=title,
    )
    ax.grid(True, which="both", alpha=0.3)
    if legend == "below":
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), fontsize=fontsize)
    else:
        ax.legend(loc=legend, fontsize=fontsize)
    _save(fig, out)


def training_curves(log_csv: str | Path, title: str, out: str | Path) -> None:
    """Training loss and learning rate per step, validation AUROC per epoch."""
    log = pd.read_csv(log_csv)
    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=110)
    if "train/loss_step" in log:
        steps = log.dropna(subset=["train/loss_step"])
        loss_ax.plot(steps["step"], steps["train/loss_step"], lw=1, label="train loss")
        lr_ax = loss_ax.twinx()
        lr_steps = log.dropna(subset=["train/lr"])
        lr_ax.plot(lr_steps["step"], lr_steps["train/lr"], color="C1", lw=1, label="learning rate")
        lr_ax.set_ylabel("learning rate")
    loss_ax.set(xlabel="step", ylabel="loss", title=f"{title}: training")
    if "val/auroc" in log:
        val = log.dropna(subset=["val/auroc"])
        if "train/loss_step" in log:
            # The selected checkpoint is validated once more after training; that row repeats
            # the best epoch's figures one epoch past the end, so it is not a point of the curve.
            last_trained = log.dropna(subset=["train/loss_step"])["epoch"].max()
            val = val[val["epoch"] <= last_trained]
        val_ax.plot(val["epoch"], val["val/auroc"], "o-", label="val AUROC")
        if "val/tpr@0.01" in val:
            val_ax.plot(val["epoch"], val["val/tpr@0.01"], "s-", label="val TPR @ FPR 1e-2")
    val_ax.set(xlabel="epoch", ylim=(0, 1.02), title="validation (unseen classes)")
    val_ax.grid(True, alpha=0.3)
    val_ax.legend(loc="lower right")
    _save(fig, out)


def _save(fig, out: str | Path) -> None:
    fig.tight_layout()
    with _io.atomic_path(out) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
