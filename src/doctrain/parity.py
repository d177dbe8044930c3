"""Parity verification: the exported file against PyTorch, and against the consumer's contract.

Both runtimes embed the same real validation images and seeded random inputs, at batch 1 and (when
the batch axis is dynamic) at a larger batch. The ONNX is published only when every check passes."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from doctrain import _io, images, provenance
from doctrain.cache import Cache
from doctrain.errors import UserError
from doctrain.model import load_trained
from doctrain.onnx_model import read_metadata, session


def contract_problems(
    sess: ort.InferenceSession,
    input_name: str = "img",
    output_name: str = "feats",
    image_size: int | None = None,
) -> list[str]:
    """What keeps the model from being a drop-in for the inference package (empty when nothing)."""
    problems = []
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    if [i.name for i in inputs] != [input_name]:
        problems.append(f"inputs are {[i.name for i in inputs]}, the contract wants exactly ['{input_name}']")
    else:
        spec = inputs[0]
        if spec.type != "tensor(float)":
            problems.append(f"input {input_name} is {spec.type}, the contract wants tensor(float)")
        if len(spec.shape) != 4 or spec.shape[1] != 3:
            problems.append(f"input {input_name} has shape {spec.shape}, the contract wants [N, 3, H, W]")
        elif image_size is not None and spec.shape[2:] != [image_size, image_size]:
            problems.append(f"input {input_name} is {spec.shape[2:]} pixels, the config says {image_size}")
    named = [o for o in outputs if o.name == output_name]
    if not named:
        problems.append(f"outputs are {[o.name for o in outputs]}, the contract wants '{output_name}'")
    elif len(named[0].shape) != 2:
        problems.append(f"output {output_name} has shape {named[0].shape}, the contract wants [N, D]")
    return problems


def _batches(array: np.ndarray, size: int) -> list[np.ndarray]:
    return [array[i : i + size] for i in range(0, len(array), size)]


def compare(
    net,
    sess: ort.InferenceSession,
    inputs: np.ndarray,
    batch_sizes: list[int],
    input_name: str,
    output_name: str,
) -> dict:
    """Embed `inputs` [N, 3, H, W] with both runtimes at each batch size; return difference figures."""
    figures = {}
    for batch in batch_sizes:
        with torch.no_grad():
            expected = np.concatenate([net(torch.from_numpy(b)).numpy() for b in _batches(inputs, batch)])
        got = np.concatenate([sess.run([output_name], {input_name: b})[0] for b in _batches(inputs, batch)])
        diff = np.abs(expected - got)
        cosine = (expected * got).sum(1) / (np.linalg.norm(expected, axis=1) * np.linalg.norm(got, axis=1))
        figures[f"batch_{batch}"] = {
            "max_abs_diff": float(diff.max()),
            "mean_abs_diff": float(diff.mean()),
            "min_cosine": float(cosine.min()),
            "max_norm_error": float(np.abs(np.linalg.norm(got, axis=1) - 1).max()),
            "torch": expected,
            "onnx": got,
        }
    return figures


def derived_limits(max_abs_diff: float, embed_dim: int) -> dict[str, float]:
    """The limits that follow from the per-value one, so that no check fails an export the per-value
    check passes: values within d of PyTorch's move a row's norm by at most d·√D, and the cosine of
    two rows by at most 2·d·√D (|g·g' − e·e'| ≤ |g − e| + |g' − e'| for unit rows). Two near-duplicate
    images whose similarities to a third differ by less than that may trade places as its nearest
    neighbour: a tie, not a disagreement."""
    per_row = max_abs_diff * embed_dim**0.5
    return {"max_norm_error": per_row, "top1_tie": 2 * per_row}


def top1_agreement(expected: np.ndarray, got: np.ndarray, tie: float) -> float:
    """Fraction of rows whose nearest other row under onnxruntime is also nearest under PyTorch
    (a neighbour whose PyTorch similarity ties the best one within `tie` counts as the same)."""
    reference = expected @ expected.T
    np.fill_diagonal(reference, -np.inf)
    candidate = got @ got.T
    np.fill_diagonal(candidate, -np.inf)
    chosen = reference[np.arange(len(got)), candidate.argmax(1)]
    return float((chosen >= reference.max(1) - tie).mean())


def verify(settings: dict, checkpoint: str | Path, onnx_path: str | Path, cache_dir: str | Path) -> dict:
    """Run every check; return the report (report["passed"] says whether all passed)."""
    parity = settings["parity"]
    onnx_meta = read_metadata(onnx_path)
    input_name, output_name = onnx_meta["input"]["name"], onnx_meta["output"]["name"]
    sess = session(onnx_path)
    cache = Cache(cache_dir)
    problems = contract_problems(sess, input_name, output_name, cache.image_size)
    if problems:
        return {"passed": False, "contract": problems, "checks": []}

    net = load_trained(checkpoint)
    val = cache.split("val").head(parity["val_images"])
    real = images.to_input(cache.samples(val))
    rng = np.random.default_rng(0)
    noise = rng.random((parity["random_inputs"], *real.shape[1:]), dtype=np.float32)
    dynamic = not isinstance(sess.get_inputs()[0].shape[0], int)
    batch_sizes = [1, parity["batch_size"]] if dynamic else [1]
    figures = {"val_images": compare(net, sess, real, batch_sizes, input_name, output_name)}
    if len(noise):
        figures["random_inputs"] = compare(net, sess, noise, batch_sizes, input_name, output_name)

    dim = net.embed_dim
    limits = derived_limits(parity["max_abs_diff"], dim)
    checks = []
    for source, per_batch in figures.items():
        for batch, fig in per_batch.items():
            where = f"{source}/{batch}"
            checks += [
                _check(f"{where} max abs diff", fig["max_abs_diff"], "<=", parity["max_abs_diff"]),
                _check(f"{where} min cosine", fig["min_cosine"], ">=", parity["min_cosine"]),
                _check(
                    f"{where} unit-norm rows (max |norm-1|; limit max_abs_diff·√{dim})",
                    fig["max_norm_error"],
                    "<=",
                    limits["max_norm_error"],
                ),
            ]
    first = figures["val_images"]["batch_1"]
    checks.append(
        _check(
            f"val_images top-1 retrieval agreement (ties within 2·max_abs_diff·√{dim})",
            top1_agreement(first["torch"], first["onnx"], limits["top1_tie"]),
            ">=",
            parity["min_top1_agreement"],
        )
    )
    for per_batch in figures.values():
        for fig in per_batch.values():
            del fig["torch"], fig["onnx"]
    return {
        "passed": all(c["passed"] for c in checks),
        "contract": [],
        "checks": checks,
        "figures": figures,
        "inputs": {"val_images": len(real), "random_inputs": len(noise), "batch_sizes": batch_sizes},
    }


def _check(name: str, value: float, op: str, limit: float) -> dict:
    passed = value <= limit if op == "<=" else value >= limit
    return {"name": name, "value": value, "limit": f"{op} {limit:g}", "passed": bool(passed)}


def failure_message(report: dict, onnx_path: str | Path) -> str:
    failed = report["contract"] or [
        f"{c['name']} = {c['value']:.3g}, wanted {c['limit']}" for c in report["checks"] if not c["passed"]
    ]
    return f"{onnx_path} failed parity verification and is not published: " + "; ".join(failed)


def run_stage(
    settings: dict,
    checkpoint: str | Path,
    onnx_path: str | Path,
    cache: str | Path,
    published: str | Path,
    report_path: str | Path,
    provenance_path: str | Path,
) -> None:
    report = verify(settings, checkpoint, onnx_path, Path(cache).parent)
    for check in report["checks"]:
        verdict = "ok    " if check["passed"] else "FAILED"
        print(f"{verdict} {check['name']} = {check['value']:.3g} ({check['limit']})")
    if not report["passed"]:
        print(json.dumps(report, indent=2), file=sys.stderr)
        raise UserError(failure_message(report, onnx_path))
    _io.write_json_atomic(report_path, report)
    with _io.atomic_path(published) as tmp:
        shutil.copyfile(onnx_path, tmp)
    record = read_metadata(onnx_path)
    record["parity"] = {"passed": True, "checks": len(report["checks"])}
    record.update(provenance.build_site())
    # provenance.json is the stage's stamp: it vouches for the published file's bytes.
    _io.write_stamp(provenance_path, record, [published, report_path])
    print(f"published {published}: every one of {len(report['checks'])} checks passed")
