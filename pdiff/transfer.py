"""Transfer to a backdoored victim: generated layers beside the defences a generator must beat.

Every method yields parameter sets for the bundle's train_layer, spliced into the same victim
and evaluated by the same engine: generated (sampled from the bundle), originals (the clean
checkpoints as they are), finetune (the victim's own train_layer trained on clean data with
the collection's step budget) and reinit (the same layers re-initialised, then trained so).
"""
from __future__ import annotations

import time

import torch

from pdiff.baselines import DEFENCES, defence_sets
from pdiff.bundle import Bundle
from pdiff.collect import Split
from pdiff.evaluate import summary
from pdiff.report import TargetEngine, as_is_metrics, method_metrics, resolve_target
from pdiff.sample import sample
from pdiff.splice import finite_rows

METHODS = ("generated", "originals", "finetune", "reinit")


def run_transfer(bundle: Bundle, victim: str, n: int, seeds: int | list[int], train: Split, test: Split,
                 sampler: str = "ddim", steps: int | None = 50, k_defence: int | None = None, device="cpu",
                 methods: tuple[str, ...] = METHODS) -> dict:
    """Every method's ACC / ASR / RA / DER lists on the victim, with a summary of each.

    With several seeds, each seed samples and trains the defences afresh; the lists hold every
    seed's values in seed order, `per_seed` each seed's means, and `spread` the mean and standard
    deviation of those means. The originals do not depend on the seed: evaluated once, one entry.
    """
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds:
        raise ValueError("give at least one seed")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    target = resolve_target(bundle, victim)
    engine = TargetEngine(bundle, target, bundle.names, test, device)
    as_is = as_is_metrics(engine, target, bundle.layout)

    results = {m: [] for m in methods}       # per method, one engine result per seed
    timings = {"sample": 0.0, "defences": 0.0, "evaluate": 0.0}
    nonfinite = 0
    originals = None
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        sets = {}
        if "generated" in methods:
            t0 = time.perf_counter()
            vectors = sample(bundle, n, sampler, steps, g, device)
            sets["generated"] = vectors[finite_rows(vectors)]
            nonfinite += int((~finite_rows(vectors)).sum())
            timings["sample"] += time.perf_counter() - t0
        defences = [m for m in DEFENCES if m in methods]
        if defences:
            t0 = time.perf_counter()
            sets.update(defence_sets(bundle.task, bundle.layout, target.state, train, test, g,
                                     k_defence or len(bundle.originals), device, defences))
            timings["defences"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        if "originals" in methods and not results["originals"]:  # the same K sets whatever the seed: once
            results["originals"].append(engine.run(bundle.originals))
        for name, vectors in sets.items():
            results[name].append(engine.run(vectors) if len(vectors) else {"acc": [], "asr": [], "ra": []})
        timings["evaluate"] += time.perf_counter() - t0

    out_methods = {}
    for name in methods:
        per_seed = [method_metrics(r, as_is, backdoor=True) for r in results[name]]
        m = {metric: [v for run in per_seed for v in run[metric]] for metric in ("acc", "asr", "ra", "der")}
        m["summary"] = {metric: summary(m[metric]) for metric in ("acc", "asr", "ra", "der")}
        m["per_seed"] = {metric: [summary(run[metric])["mean"] for run in per_seed] for metric in ("acc", "asr", "ra", "der")}
        m["spread"] = {metric: _mean_std(vals) for metric, vals in m["per_seed"].items()}
        out_methods[name] = m
    return {"task": bundle.task.name, "victim": {"name": target.name, **as_is, "trigger": target.trigger.to_dict()},
            "n": n, "seeds": seeds, "sampler": sampler, "layers": bundle.names, "methods": out_methods,
            "nonfinite": nonfinite, "timings_s": timings, "device": str(device)}


def _mean_std(values: list[float | None]) -> dict[str, float | None]:
    vals = torch.tensor([v for v in values if v is not None], dtype=torch.float64)
    if len(vals) == 0:
        return {"mean": None, "std": None}
    return {"mean": vals.mean().item(), "std": vals.std().item() if len(vals) > 1 else 0.0}


def table(report: dict) -> str:
    """One line per method: means of ACC, ASR, RA and DER; with several seeds, mean ± std of the seeds' means."""
    v = report["victim"]
    several = len(report.get("seeds", [])) > 1
    lines = [f"victim {v['name']}: ACC {v['acc']:.2f}  ASR {v['asr']:.2f}  RA {v['ra']:.2f}"
             + (f"  (seeds {', '.join(map(str, report['seeds']))}: mean ± std over seeds)" if several else ""),
             f"{'method':<10} {'n':>5} {'ACC':>13} {'ASR':>13} {'RA':>13} {'DER':>13} {'DER best':>9}"]
    for name, m in report["methods"].items():
        if not m["acc"]:
            lines.append(f"{name:<10} {0:>5}  (no finite parameter sets)")
            continue
        cells = []
        for metric, fmt in (("acc", ".2f"), ("asr", ".2f"), ("ra", ".2f"), ("der", ".3f")):
            sp = m["spread"][metric]
            cells.append(f"{sp['mean']:{fmt}} ± {sp['std']:{fmt}}" if several else f"{m['summary'][metric]['mean']:{fmt}}")
        lines.append(f"{name:<10} {len(m['acc']):>5} " + " ".join(f"{c:>13}" for c in cells)
                     + f" {m['summary']['der']['best']:>9.3f}")
    return "\n".join(lines)
