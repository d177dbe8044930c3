"""The threshold that ships with a model: chosen at the config's target false-positive rate on pairs
that did not select the checkpoint (the calibration split) where there are any, written into the
ONNX metadata, and said in one line wherever a user meets it (export, evaluate, provenance,
classify). Apart from doctrain.metrics so that the steps that only read figures do not import
scikit-learn (1.3 s of a step's start-up)."""

from __future__ import annotations

# Where a threshold is chosen without a calibration split (and where every model exported before
# there was one had its threshold chosen): the pairs that favour the model they selected.
SELECTION_PAIRS = "the validation pairs that selected the checkpoint"


def operating_point(figures: dict, fpr: float, chosen_on: str) -> dict:
    """The threshold to ship with a model: the one at the target FPR of `verification_metrics`'
    figures of the pairs `chosen_on` describes, or, when they cannot resolve that rate, at the
    smallest target they do resolve (the largest target when none is resolvable; `resolvable` then
    says false)."""
    targets = sorted(float(t) for t in figures["at_fpr"])
    candidates = [t for t in targets if t >= fpr] or targets[-1:]
    chosen = next((t for t in candidates if figures["at_fpr"][f"{t:g}"]["resolvable"]), candidates[-1])
    return {"fpr": chosen, "requested_fpr": fpr, **figures["at_fpr"][f"{chosen:g}"], "chosen_on": chosen_on}


def describe_operating_point(point: dict) -> str:
    """One line on a shipped threshold: where it was chosen, and whether it is not at the FPR the
    config asked for."""
    text = (
        f"operating threshold {point['threshold']:.4f} at FPR {point['fpr']:g} "
        f"(TPR there {point['tpr']:.3f}), chosen on {point.get('chosen_on', SELECTION_PAIRS)}"
    )
    if not point["resolvable"]:
        return text + "; no FPR target is resolvable by these pairs: this threshold is a rough guess"
    if point["fpr"] != point["requested_fpr"]:
        return (
            text + f"; not at the requested FPR {point['requested_fpr']:g}, which these pairs cannot "
            "resolve (more calibration images resolve smaller rates)"
        )
    return text
