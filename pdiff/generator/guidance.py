"""The guidance scale a conditional bundle uses by default, chosen on the validation split, never on the test split.

For each scale on GUIDANCE_GRID, GUIDANCE_SETS sets are drawn (DDIM, GUIDANCE_STEPS steps) with the condition a
user asks most (`acc=best`; `trunk=` the first training trunk, measured on that trunk) and measured on the
validation images; the scale with the best mean validation accuracy is kept in the bundle (its `condition.guidance`),
with the whole table beside it.
"""
from __future__ import annotations

from pdiff.core.settings import SamplingSpec
from pdiff.data.datasets import Split
from pdiff.generator.bundle import Bundle
from pdiff.generator.sampling import draw
from pdiff.models.loading import check_architecture
from pdiff.models.staged import BatchedEvaluator, accuracies
from pdiff.core.splice import stacked_params

GUIDANCE_GRID = (0.0, 0.5, 1.0, 2.0, 3.0)
GUIDANCE_SETS, GUIDANCE_STEPS = 50, 20


def choose_guidance(bundle: Bundle, validation: Split, device="cpu") -> tuple[float, dict[str, float]]:
    """(the scale with the best mean validation accuracy, {scale: that accuracy} for every scale tried)."""
    c = bundle.conditions
    if c is None:
        raise ValueError("only a conditional bundle has a guidance scale")
    trunk = bundle.base_state  # the first training trunk: acc conditions were measured on their own trunks
    condition = "acc=best" if c.kind == "acc" else "trunk=target"
    evaluator = BatchedEvaluator(check_architecture(bundle.task, trunk), validation.normalized(device), bundle.names,
                                 device)
    table = {}
    for scale in GUIDANCE_GRID:
        spec = SamplingSpec(GUIDANCE_SETS, "ddim", GUIDANCE_STEPS, seed=0, condition=condition, guidance=scale)
        samples = draw(bundle, spec, device, target_state=trunk)
        vectors = samples.vectors[samples.finite]
        accs = accuracies(evaluator.predict_many(stacked_params(vectors, bundle.layout, trunk)), validation.labels)
        table[str(scale)] = sum(accs) / len(accs) if accs else float("-inf")
    best = max(GUIDANCE_GRID, key=lambda s: table[str(s)])
    return best, table


def set_guidance(bundle: Bundle, validation: Split, device="cpu") -> float:
    """Choose the bundle's default scale on `validation` and record it (and the table) in its conditions."""
    scale, table = choose_guidance(bundle, validation, device)
    bundle.conditions.meta.update(guidance=scale, guidance_on_validation={
        "condition": "acc=best" if bundle.conditions.kind == "acc" else "trunk=the first training trunk",
        "sets": GUIDANCE_SETS, "sampler": f"ddim-{GUIDANCE_STEPS}", "mean_validation_acc": table})
    return scale
