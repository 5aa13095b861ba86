"""The guidance scale a conditional bundle uses by default, chosen on the validation split, never on the test split.

For each scale on GUIDANCE_GRID, GUIDANCE_SETS sets are drawn with the condition a user asks most (`acc=best`;
`trunk=` the first training trunk, measured on that trunk) and measured on the validation images; the scale with the
best mean validation accuracy is kept in the bundle (its `condition.guidance`), with the whole table and the sampler
that drew the sets beside it.

The sets are drawn with the sampler the reports use (SamplingSpec's default: DDPM, all T steps), because the figures
depend on it: a few DDIM steps put a trunk bundle's first training trunk tens of points under where DDPM-1000 puts
it. A faster sampler may be asked for (`train --guidance-sampler ddim`); the record names the sampler and its steps
either way (experiments/guidance_sampler.py draws a shipped bundle's choice again with another sampler).
"""
from __future__ import annotations

from dataclasses import replace

from pdiff.core.settings import SamplingSpec
from pdiff.data.datasets import Split
from pdiff.generator.bundle import Bundle
from pdiff.generator.conditions import DEFAULT_ASK
from pdiff.generator.sampling import draw
from pdiff.models.loading import check_architecture
from pdiff.models.staged import BatchedEvaluator, accuracies
from pdiff.core.splice import stacked_params

GUIDANCE_GRID = (0.0, 0.5, 1.0, 2.0, 3.0)
GUIDANCE_SETS = 50  # five scales of 50 sets through DDPM-1000: a few minutes on a CPU for the shipped bundles
GUIDANCE_SAMPLING = SamplingSpec(GUIDANCE_SETS, seed=0)  # the reports' sampler: DDPM, the bundle's T steps


def choose_guidance(bundle: Bundle, validation: Split, device="cpu",
                    sampling: SamplingSpec = GUIDANCE_SAMPLING) -> tuple[float, dict[str, float]]:
    """(the scale with the best mean validation accuracy, {scale: that accuracy} for every scale tried), each scale's
    sets drawn as `sampling` says (its n, sampler, steps and seed; the condition and scale are set here)."""
    c = bundle.conditions
    if c is None:
        raise ValueError("only a conditional bundle has a guidance scale")
    trunk = bundle.base_state  # the first training trunk: acc conditions were measured on their own trunks
    condition = DEFAULT_ASK[c.kind]  # what a user asks most
    evaluator = BatchedEvaluator(check_architecture(bundle.task, trunk), validation.normalized(device), bundle.names,
                                 device)
    table = {}
    for scale in GUIDANCE_GRID:
        samples = draw(bundle, replace(sampling, condition=condition, guidance=scale), device, target_state=trunk)
        vectors = samples.vectors[samples.finite]
        accs = accuracies(evaluator.predict_many(stacked_params(vectors, bundle.layout, trunk)), validation.labels)
        table[str(scale)] = sum(accs) / len(accs) if accs else float("-inf")
    best = max(GUIDANCE_GRID, key=lambda s: table[str(s)])
    return best, table


def set_guidance(bundle: Bundle, validation: Split, device="cpu", sampling: SamplingSpec = GUIDANCE_SAMPLING) -> float:
    """Choose the bundle's default scale on `validation` and record it in its conditions, with the table and the
    sampler and steps (the denoiser calls per set: T for DDPM) the choice drew its sets with."""
    scale, table = choose_guidance(bundle, validation, device, sampling)
    bundle.conditions.meta.update(guidance=scale, guidance_on_validation={
        "condition": "acc=best" if bundle.conditions.kind == "acc" else "trunk=the first training trunk",  # in words
        "sets": sampling.n, "sampler": sampling.sampler, "steps": sampling.chain_steps(bundle.ddpm_cfg.timesteps),
        "seed": sampling.seed, "mean_validation_acc": table})
    return scale
