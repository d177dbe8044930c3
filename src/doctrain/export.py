"""ONNX export in the reference recipe's format: a registered inference wrapper (backbone + head
only, no loss weights), named inputs and outputs, dynamic axes, one self-contained file carrying
its input contract and provenance in metadata_props."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from doctrain import _io, images, provenance
from doctrain.cache import Cache
from doctrain.errors import UserError
from doctrain.metrics import pair_scores, verification_metrics
from doctrain.model import EmbeddingNet, load_trained
from doctrain.onnx_model import to_metadata
from doctrain.operating_point import SELECTION_PAIRS, describe_operating_point, operating_point

WRAPPERS: dict[str, type[nn.Module]] = {}


def register_wrapper(cls: type[nn.Module]) -> type[nn.Module]:
    WRAPPERS[cls.__name__] = cls
    return cls


@register_wrapper
class WarpFeatureLearning(nn.Module):
    """img float32 [N, 3, H, W] BGR /255 -> feats float32 [N, D], L2-normalised rows."""

    def __init__(self, net: EmbeddingNet):
        super().__init__()
        self.net = net

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.net(img)


def contract_metadata(settings: dict, embed_dim: int, name: str) -> dict:
    onnx_cfg = settings["onnx"]
    ((input_name, spec),) = onnx_cfg["input_shape"].items()
    _, channels, height, width = spec["shape"]
    return {
        "config_name": name,
        "input": {
            "name": input_name,
            "dtype": spec["dtype"],
            "layout": "NCHW",
            "shape": [
                "N" if "0" in onnx_cfg["dynamic_axes"].get(input_name, {}) else spec["shape"][0],
                channels,
                height,
                width,
            ],
        },
        "preprocessing": {
            "channel_order": "BGR",
            "scale": "1/255",
            "resize": "bilinear, aspect not kept",
            "height": height,
            "width": width,
            "mean": None,
            "std": None,
        },
        "output": {"name": onnx_cfg["output_names"][0], "shape": ["N", embed_dim], "l2_normalised": True},
        "embedding_dim": embed_dim,
    }


def export(settings: dict, net: EmbeddingNet, out: str | Path, metadata: dict) -> None:
    """Export, check with onnx.checker (full check) and write atomically."""
    onnx_cfg = settings["onnx"]
    wrapper = WRAPPERS[onnx_cfg["name"]](net).eval()
    example = tuple(
        torch.zeros(spec["shape"], dtype=getattr(torch, spec["dtype"]))
        for spec in onnx_cfg["input_shape"].values()
    )
    dynamic_axes = {
        tensor: {int(axis): label for axis, label in axes.items()}
        for tensor, axes in onnx_cfg["dynamic_axes"].items()
    }
    options = onnx_cfg["options"]
    with _io.atomic_path(out) as tmp:
        # The TorchScript-based exporter, though torch deprecates it: it writes the recipe's opset 16.
        # The dynamo exporter (torch 2.14, onnxscript 0.7.2) writes opset 18 for this model and its
        # down-conversion to 16 fails in onnx's version converter (`node->hasAttribute(kaxes)`);
        # it also puts source paths in every node's metadata (416 entries), which would have to be
        # stripped to keep the bytes independent of where the checkout lives. Measured 2026-12-04.
        torch.onnx.export(
            wrapper,
            example,
            str(tmp),
            input_names=onnx_cfg["input_names"],
            output_names=onnx_cfg["output_names"],
            dynamic_axes=dynamic_axes,
            opset_version=options["opset_version"],
            do_constant_folding=options["do_constant_folding"],
            verbose=options["verbose"],
            dynamo=False,
            external_data=False,
        )
        model = onnx.load(str(tmp))
        model.producer_name, model.doc_string = "doctrain", f"doctrain {onnx_cfg['name']}"
        for key, value in to_metadata(metadata).items():
            model.metadata_props.append(onnx.StringStringEntryProto(key=key, value=value))
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(tmp))


CALIBRATION_BATCH = 64


def shipped_threshold(net: EmbeddingNet, cache: Cache, trained_val: dict, fpr: float) -> dict:
    """The operating point on every pair of the calibration split, embedded by the network being
    exported; without a calibration split, from the training's validation figures (the pairs that
    also selected the checkpoint, and so favour it)."""
    labels = cache.split("calibration")["label"].to_numpy()
    if len(set(labels)) < 2:
        return operating_point(trained_val, fpr, f"{SELECTION_PAIRS} (there is no calibration split)")
    if len(set(labels)) == len(labels):
        raise UserError(
            "the calibration split has one image per class, so no same-class pair to set a threshold "
            "on: give its classes at least two images each"
        )
    with torch.no_grad():
        batches = cache.batches("calibration", CALIBRATION_BATCH)
        embedded = np.concatenate([net(torch.from_numpy(images.to_input(b))).numpy() for b in batches])
    figures = verification_metrics(*pair_scores(embedded, labels))
    pairs = figures["positive_pairs"] + figures["negative_pairs"]
    return operating_point(
        figures,
        fpr,
        f"{pairs:,} calibration pairs ({len(labels)} images of {len(set(labels))} classes that did not "
        "select the checkpoint)",
    )


def run_stage(
    settings: dict,
    checkpoint: str | Path,
    train_stamp: str | Path,
    metrics: str | Path,
    validation_report: str | Path,
    cache: str | Path,
    out: str | Path,
    stamp: str | Path,
    name: str,
    lineage: dict,
) -> None:
    net = load_trained(checkpoint)
    train_facts = json.loads(Path(train_stamp).read_text())
    trained = json.loads(Path(metrics).read_text())
    fpr = settings["operating_point"]["fpr"]
    point = shipped_threshold(net, Cache(Path(cache).parent), trained["val"], fpr)
    metadata = contract_metadata(settings, net.embed_dim, name)
    metadata.update(lineage)
    metadata.update(
        {
            "dataset_sha256": json.loads(Path(validation_report).read_text())["dataset_sha256"],
            "state_dict_sha256": train_facts["state_dict_sha256"],
            "kernels": trained["train"]["kernels"],
            "versions": provenance.software_versions(),
            "operating_point": point,
        }
    )
    export(settings, net, out, metadata)
    _io.write_stamp(stamp, {}, [out])
    given, made = metadata["input"], metadata["output"]
    opset = settings["onnx"]["options"]["opset_version"]
    print(
        f"exported {out}: {Path(out).stat().st_size:,} bytes, opset {opset}, "
        f"input {given['name']} {given['shape']}, output {made['name']} {made['shape']}; "
        + describe_operating_point(point)
    )
