"""The embedding network: a timm backbone (features only) and the reference recipe's LayerNorm head."""

from __future__ import annotations

from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from doctrain.errors import UserError


def replace_hardswish(module: nn.Module) -> int:
    """Replace every Hardswish with ReLU in place (quantisation-friendly); return how many."""
    replaced = 0
    for name, child in module.named_children():
        if isinstance(child, nn.Hardswish):
            setattr(module, name, nn.ReLU(inplace=True))
            replaced += 1
        else:
            replaced += replace_hardswish(child)
    return replaced


def _load_local_weights(backbone: nn.Module, weights: str) -> None:
    path = Path(weights)
    if not path.is_file():
        raise UserError(f"model.weights: {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    # A classification checkpoint of the same timm model carries a classifier the feature
    # extractor lacks; everything the extractor has must be present (missing keys are an error).
    wanted = backbone.state_dict().keys()
    missing = [k for k in wanted if k not in state]
    if missing:
        raise UserError(f"model.weights: {path} lacks {len(missing)} backbone tensors, e.g. {missing[:3]}")
    backbone.load_state_dict({k: state[k] for k in wanted}, strict=True)


class EmbeddingNet(nn.Module):
    """img float32 [N, 3, H, W] (BGR, /255) -> feats float32 [N, embed_dim], unit L2 norm per row."""

    def __init__(
        self,
        backbone: str,
        embed_dim: int,
        pretrained: bool = False,
        weights: str | None = None,
        replace_components: bool = True,
    ):
        super().__init__()
        try:
            self.backbone = timm.create_model(
                backbone, pretrained=pretrained, features_only=True, out_indices=(-1,)
            )
        except RuntimeError as exc:
            raise UserError(f"model.backbone '{backbone}': {exc}") from None
        if weights:
            _load_local_weights(self.backbone, weights)
        if replace_components:
            replace_hardswish(self.backbone)
        channels = self.backbone.feature_info.channels()[-1]
        self.head = nn.Sequential(
            nn.Linear(channels, embed_dim),
            nn.LayerNorm(embed_dim),
            nn.Linear(embed_dim, embed_dim),
            nn.LayerNorm(embed_dim),
        )

    @property
    def embed_dim(self) -> int:
        return self.head[-1].normalized_shape[0]

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        features = self.backbone(img)[-1]  # [N, C, h, w]; 256 x 3 x 3 for lcnet_050 at 96 px
        pooled = features.mean(dim=(2, 3))  # [N, C]
        return F.normalize(self.head(pooled), dim=1)


def load_trained(checkpoint: str | Path) -> EmbeddingNet:
    """The trained network of a training checkpoint, in eval mode on the CPU, loaded strictly (a
    missing or unexpected tensor is an error). The checkpoint's hyper-parameters rebuild it, as
    `EmbeddingModule.load_from_checkpoint` would, without importing Lightning (about 1 s of an
    export or verify step's start-up). Hub and local backbone weights are not re-fetched: the
    checkpoint holds every weight."""
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model = saved["hyper_parameters"]["model"]
    net = EmbeddingNet(model["backbone"], model["embed_dim"], replace_components=model["replace_components"])
    state = saved["state_dict"]
    weights = {key.removeprefix("net."): value for key, value in state.items() if key.startswith("net.")}
    net.load_state_dict(weights, strict=True)
    if model["channels_last"]:
        net = net.to(memory_format=torch.channels_last)
    return net.eval()
