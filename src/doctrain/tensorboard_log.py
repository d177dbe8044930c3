"""What users watch while a training runs: TensorBoard event files in results/EXP/tensorboard, so
that `tensorboard --logdir results` lists every experiment by name.

Lightning's TensorBoard logger writes every scalar the training logs (per step and per epoch) beside
the CSV log; at the end the ROC and training-curve figures are added as images. One continuous run
across resumes: a resumed training marks its resume step in the events (TensorBoard's purge step),
so what the stopped process logged after that point is hidden and logged again by the resumed one;
a training that starts over removes the earlier events. Nothing here draws a random number or
touches the model, so the weights are those of a training without it."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import torch
from lightning.pytorch.loggers import TensorBoardLogger

# Seconds between writes to disk: what a user watching a running training waits for at most.
FLUSH_SECS = 10


def logger(folder: Path, resume_from: Path | None, prepare: bool) -> TensorBoardLogger:
    """The training's TensorBoard logger. Where the training starts over, the rank that `prepare`s
    the work folder also removes the events of earlier trainings of this experiment."""
    folder = Path(folder)
    if resume_from is None and prepare and folder.exists():
        shutil.rmtree(folder)
    purge_step = None
    if resume_from is not None:
        purge_step = torch.load(resume_from, map_location="cpu", weights_only=False)["global_step"]
    return TensorBoardLogger(
        folder.parent,
        name=folder.name,
        version="",
        default_hp_metric=False,
        purge_step=purge_step,
        flush_secs=FLUSH_SECS,
    )


def add_figures(folder: Path, pngs: dict[str, Path], step: int) -> None:
    """The training's figures (tag -> PNG file) as images at its last step."""
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(folder)) as writer:
        for tag, png in pngs.items():
            rgb = cv2.cvtColor(cv2.imread(str(png), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            writer.add_image(tag, rgb, global_step=step, dataformats="HWC")
