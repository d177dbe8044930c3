"""The LightningModule: embedding network + margin loss, AdamW, per-step warm-up/decay schedule,
and the pairwise verification metric on validation. Built from the config's blocks (plain data,
saved whole as its hyper-parameters), so `EmbeddingModule.load_from_checkpoint(path)` alone
rebuilds the trained model."""

from __future__ import annotations

import functools

import lightning as L
import numpy as np
import torch

from doctrain import augment, images
from doctrain.distributed import gather_batches
from doctrain.losses import MarginSoftmax
from doctrain.metrics import pair_scores, verification_metrics
from doctrain.model import EmbeddingNet


def warmup_then_decay(step: int, total_steps: int, warmup_steps: int, power: float) -> float:
    """Learning-rate factor: linear 0 -> 1 over the warm-up, then (1 - progress)^power down to 0."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(0.0, 1.0 - progress) ** power


class EmbeddingModule(L.LightningModule):
    """Built from the config's blocks as the schema validated them (`model`, `loss`, `optimizer`)
    and the schedule in steps: these are its hyper-parameters, saved whole in every checkpoint."""

    def __init__(self, num_classes: int, model: dict, loss: dict, optimizer: dict, schedule: dict):
        super().__init__()
        self.save_hyperparameters()
        self.net = EmbeddingNet(
            model["backbone"],
            model["embed_dim"],
            model["pretrained"],
            model["weights"],
            model["replace_components"],
        )
        self.margin = MarginSoftmax(num_classes, model["embed_dim"], loss["name"], loss["s"], loss["m"])
        if model["channels_last"]:
            self.net = self.net.to(memory_format=torch.channels_last)
        # A GPU's augmentation: every transform over the whole batch (trainer.compile compiles it).
        self.augment_whole_batch = functools.partial(augment.apply, whole_batch=True)
        self._val_batches: list[tuple[int, np.ndarray, np.ndarray]] = []
        self._epoch_loss: tuple[torch.Tensor, int] = (torch.zeros(()), 0)  # sum and count this epoch
        self.last_val: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def from_settings(cls, settings: dict, num_classes: int, steps_per_epoch: int) -> EmbeddingModule:
        """From the training stage's settings; the schedule's fractions become steps."""
        sched = settings["schedule"]
        total = sched["epochs"] * steps_per_epoch
        schedule = {
            "total_steps": total,
            "warmup_steps": round(sched["warmup_fraction"] * total),
            "power": sched["power"],
        }
        return cls(num_classes, settings["model"], settings["loss"], settings["optimizer"], schedule)

    @property
    def embed_dim(self) -> int:
        return self.hparams.model["embed_dim"]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.hparams.model["channels_last"]:
            img = img.contiguous(memory_format=torch.channels_last)
        return self.net(img)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """The loaders send uint8 pixels; a training batch, which carries its samples' drawn
        augmentation parameters, is augmented here, on the device (doctrain.augment): on a GPU
        each transform over the whole batch, on a CPU over its own rows."""
        pixels, labels, extra = batch
        if isinstance(extra, dict):
            if pixels.is_cuda:
                augment.constants_to(pixels.device)
                # A new step: what CUDA graphs (trainer.compile) gave the last one is free to reuse.
                torch.compiler.cudagraph_mark_step_begin()
                return self.augment_whole_batch(pixels, extra), labels
            return augment.apply(pixels, extra, whole_batch=False), labels
        return images.tensor_input(pixels), labels, extra

    def training_step(self, batch, batch_idx):
        img, labels = batch
        loss = self.margin(self(img), labels)
        # Averaged over the ranks: the loss of the global batch, as one process would log it.
        self.log("train/loss_step", loss, prog_bar=True, on_step=True, on_epoch=False, sync_dist=True)
        # A CPU tensor: Lightning makes a number into a tensor on the module's device, a copy from
        # host memory that waits for the GPU's queue every step.
        lr = torch.tensor(self.optimizers().param_groups[0]["lr"], dtype=torch.float32)
        self.log("train/lr", lr, on_step=True, on_epoch=False)
        self._epoch_loss = (self._epoch_loss[0] + loss.detach(), self._epoch_loss[1] + 1)
        return loss

    # The epoch's mean loss is summed here rather than by Lightning (on_epoch=True), whose running
    # sums a checkpoint does not carry: an epoch resumed in its middle then averaged only the
    # batches after the resume.
    def on_train_epoch_start(self) -> None:
        self._epoch_loss = (torch.zeros((), device=self.device), 0)

    def on_train_epoch_end(self) -> None:
        total, batches = self._epoch_loss
        self.log("train/loss_epoch", total / max(1, batches), sync_dist=True)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["epoch_loss"] = (float(self._epoch_loss[0]), self._epoch_loss[1])

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if "epoch_loss" in checkpoint:  # a published checkpoint has none: it is not resumed
            total, batches = checkpoint["epoch_loss"]
            self._epoch_loss = (torch.tensor(total, device=self.device), batches)

    def on_validation_epoch_start(self) -> None:
        self._val_batches = []

    def validation_step(self, batch, batch_idx):
        img, labels, rows = batch
        feats = self(img).float().cpu().numpy()
        scores, same = pair_scores(feats, labels.cpu().numpy())
        self._val_batches.append((int(rows[0]), scores, same))

    def on_validation_epoch_end(self) -> None:
        # The whole validation set's pairs on every rank, so every rank logs the same figures and
        # picks the same best epoch.
        scores, same = gather_batches(self._val_batches)
        self.last_val = (scores, same)
        metrics = verification_metrics(scores, same)
        self.log("val/auroc", metrics["auroc"], prog_bar=True)
        for fpr, entry in metrics["at_fpr"].items():
            self.log(f"val/tpr@{fpr}", entry["tpr"], prog_bar=fpr == "0.01")

    def configure_optimizers(self):
        opt, sched = self.hparams.optimizer, self.hparams.schedule
        # The reference recipe exempts biases from weight decay (and nothing else).
        decay = [p for n, p in self.named_parameters() if not n.endswith(".bias")]
        no_decay = [p for n, p in self.named_parameters() if n.endswith(".bias")]
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": opt["weight_decay"]},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=opt["lr"],
            betas=tuple(opt["betas"]),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer,
            lambda step: warmup_then_decay(step, sched["total_steps"], sched["warmup_steps"], sched["power"]),
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
