"""Margin-based softmax losses over a learned class-weight matrix, by name (`loss.name` in the
config): each margin is a function of the target class's cosine, registered as timm registers its
models, so a new margin is one decorated function (and its name in the schema's enum)."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

Margin = Callable[[torch.Tensor, float], torch.Tensor]
MARGINS: dict[str, Margin] = {}


def register_margin(name: str) -> Callable[[Margin], Margin]:
    def register(margin: Margin) -> Margin:
        MARGINS[name] = margin
        return margin

    return register


@register_margin("cosface")
def cosface(cos: torch.Tensor, m: float) -> torch.Tensor:
    """cos(theta) - m."""
    return cos - m


@register_margin("arcface")
def arcface(cos: torch.Tensor, m: float) -> torch.Tensor:
    """cos(theta + m); acos has an infinite slope at +-1, so theta is kept off the ends."""
    return torch.cos(torch.acos(cos.clamp(-1 + 1e-7, 1 - 1e-7)) + m)


class MarginSoftmax(nn.Module):
    """logits = s * margin(cos(theta)) for the target class, s * cos(theta) for the others, with
    cos(theta) = normalise(emb) . normalise(W)^T clamped to [-1, 1]."""

    def __init__(
        self, num_classes: int, embed_dim: int, kind: str = "cosface", s: float = 64.0, m: float = 0.4
    ):
        super().__init__()
        if kind not in MARGINS:
            raise ValueError(f"unknown margin {kind!r} (registered: {', '.join(sorted(MARGINS))})")
        self.margin, self.s, self.m = MARGINS[kind], s, m
        self.weight = nn.Parameter(torch.randn(num_classes, embed_dim) * 0.1)  # init N(0, 0.1), as upstream

    def logits(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cos = F.linear(F.normalize(embeddings), F.normalize(self.weight)).clamp(-1, 1)  # [N, classes]
        target = cos.gather(1, labels[:, None])  # [N, 1]
        return self.s * cos.scatter(1, labels[:, None], self.margin(target, self.m))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.logits(embeddings, labels), labels)
