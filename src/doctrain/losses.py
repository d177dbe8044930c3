"""Margin-based softmax losses over a learned class-weight matrix: CosFace and ArcFace."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class MarginSoftmax(nn.Module):
    """logits = s * margin(cos(theta)) for the target class, s * cos(theta) for the others.

    cos(theta) = normalise(emb) . normalise(W)^T, clamped to [-1, 1];
    cosface: margin(c) = c - m;   arcface: margin(c) = cos(arccos(c) + m)."""

    def __init__(
        self, num_classes: int, embed_dim: int, kind: str = "cosface", s: float = 64.0, m: float = 0.4
    ):
        super().__init__()
        if kind not in ("cosface", "arcface"):
            raise ValueError(f"unknown margin kind {kind!r}")
        self.kind, self.s, self.m = kind, s, m
        self.weight = nn.Parameter(torch.randn(num_classes, embed_dim) * 0.1)  # init N(0, 0.1), as upstream

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(embeddings), F.normalize(self.weight)).clamp(-1, 1)  # [N, classes]
        target = cos.gather(1, labels[:, None])  # [N, 1]
        if self.kind == "cosface":
            target_with_margin = target - self.m
        else:
            # acos has an infinite slope at +-1: keep theta off the ends for finite gradients.
            theta = torch.acos(target.clamp(-1 + 1e-7, 1 - 1e-7))
            target_with_margin = torch.cos(theta + self.m)
        return self.s * cos.scatter(1, labels[:, None], target_with_margin)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(embeddings, labels), labels)
