"""The threshold that ships with a model: chosen from the training's validation figures at the
config's target false-positive rate, written into the ONNX metadata, and said in one line wherever a
user meets it (export, evaluate, provenance, classify). Apart from doctrain.metrics so that the
steps that only read figures do not import scikit-learn (1.3 s of an export step's start-up)."""

from __future__ import annotations


def operating_point(val: dict, fpr: float) -> dict:
    """The threshold to ship with a model: the one at the target FPR of `verification_metrics`'
    figures, or, when the validation pairs cannot resolve that rate, at the smallest target they do
    resolve (the largest target when none is resolvable; `resolvable` then says false)."""
    targets = sorted(float(t) for t in val["at_fpr"])
    candidates = [t for t in targets if t >= fpr] or targets[-1:]
    chosen = next((t for t in candidates if val["at_fpr"][f"{t:g}"]["resolvable"]), candidates[-1])
    figures = val["at_fpr"][f"{chosen:g}"]
    return {"fpr": chosen, "requested_fpr": fpr, **figures}


def describe_operating_point(point: dict) -> str:
    """One line on a shipped threshold, saying so where it is not at the FPR the config asked for."""
    text = (
        f"operating threshold {point['threshold']:.4f} at FPR {point['fpr']:g} (TPR there {point['tpr']:.3f})"
    )
    if not point["resolvable"]:
        return text + ": no FPR target is resolvable by the validation pairs; this threshold is a rough guess"
    if point["fpr"] != point["requested_fpr"]:
        return (
            text + f", not at the requested FPR {point['requested_fpr']:g}, which the validation pairs "
            "cannot resolve (more validation images resolve smaller rates)"
        )
    return text
