"""The LightningModule: embedding network + margin loss, AdamW, per-step warm-up/decay schedule,
and the pairwise verification metric on validation. Built from plain hyper-parameters only, so
`EmbeddingModule.load_from_checkpoint(path)` alone rebuilds the trained model."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch

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
    def __init__(
        self,
        backbone: str,
        embed_dim: int,
        num_classes: int,
        *,
        pretrained: bool = False,
        weights: str | None = None,
        replace_components: bool = True,
        channels_last: bool = False,
        loss: str = "cosface",
        s: float = 64.0,
        m: float = 0.4,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        weight_decay: float = 0.1,
        total_steps: int = 1,
        warmup_steps: int = 0,
        power: float = 1.0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.net = EmbeddingNet(backbone, embed_dim, pretrained, weights, replace_components)
        self.margin = MarginSoftmax(num_classes, embed_dim, loss, s, m)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self._val_scores: list[np.ndarray] = []
        self._val_same: list[np.ndarray] = []
        self.last_val: tuple[np.ndarray, np.ndarray] | None = None

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            img = img.contiguous(memory_format=torch.channels_last)
        return self.net(img)

    def training_step(self, batch, batch_idx):
        img, labels = batch
        loss = self.margin(self(img), labels)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        self.log("train/lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val_scores, self._val_same = [], []

    def validation_step(self, batch, batch_idx):
        img, labels = batch
        feats = self(img).float().cpu().numpy()
        scores, same = pair_scores(feats, labels.cpu().numpy())
        self._val_scores.append(scores)
        self._val_same.append(same)

    def on_validation_epoch_end(self) -> None:
        scores, same = np.concatenate(self._val_scores), np.concatenate(self._val_same)
        self.last_val = (scores, same)
        metrics = verification_metrics(scores, same)
        self.log("val/auroc", metrics["auroc"], prog_bar=True)
        for fpr, entry in metrics["at_fpr"].items():
            self.log(f"val/tpr@{fpr}", entry["tpr"], prog_bar=fpr == "0.01")

    def configure_optimizers(self):
        hp = self.hparams
        # The reference recipe exempts biases from weight decay (and nothing else).
        decay = [p for n, p in self.named_parameters() if not n.endswith(".bias")]
        no_decay = [p for n, p in self.named_parameters() if n.endswith(".bias")]
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": hp.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=hp.lr,
            betas=tuple(hp.betas),
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_then_decay(step, hp.total_steps, hp.warmup_steps, hp.power)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}
