"""Transfer to a backdoored victim: generated layers beside the defences a generator must beat.

Every method yields parameter sets for the bundle's train_layer, spliced into the same victim
and evaluated by the same engine: generated (sampled from the bundle), originals (the clean
checkpoints as they are), finetune (the victim's own train_layer trained on clean data with
the collection's step budget) and reinit (the same layers re-initialised, then trained so).
"""
from __future__ import annotations

import time

import torch

from pdiff.backdoor import trigger_line
from pdiff.baselines import DEFENCES, defence_sets
from pdiff.bundle import Bundle
from pdiff.data import Split
from pdiff.evaluate import TargetEngine, measure, summary
from pdiff.sample import sample_finite
from pdiff.targets import resolve_target

METHODS = ("generated", "originals", "finetune", "reinit")
METRICS = ("acc", "asr", "ra", "der")
TABLE_HEADERS = ["method", "n", "ACC mean", "ASR mean", "RA mean", "DER mean", "DER best"]


def run_transfer(bundle: Bundle, victim: str, n: int, seeds: int | list[int], train: Split | None, test: Split,
                 sampler: str = "ddim", steps: int | None = 50, k_defence: int | None = None, device="cpu",
                 methods: tuple[str, ...] = METHODS, trigger=None) -> dict:
    """Every method's ACC / ASR / RA / DER lists on the victim, with a summary of each.

    With several seeds, each seed samples and trains the defences afresh; the lists hold every
    seed's values in seed order, `per_seed` each seed's means, and `spread` the mean and standard
    deviation of those means. The originals do not depend on the seed: evaluated once, one entry.
    `trigger` (a Trigger, preset name or spec file) overrides the victim's own; see resolve_target.
    """
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds:
        raise ValueError("give at least one seed")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    target = resolve_target(bundle, victim, trigger)
    if target.trigger is None:
        raise ValueError(f"transfer measures backdoor removal, but target {target.name!r} has no trigger "
                         f"({target.trigger_source or 'the clean model'})")
    engine = TargetEngine(bundle.task, bundle.layout, target, test, device=device)

    defences = [m for m in DEFENCES if m in methods]
    runs = {m: [] for m in methods}          # per method, one metrics dict per seed
    timings = {"sample": 0.0, "defences": 0.0, "evaluate": 0.0}
    nonfinite = 0
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        sets = {"originals": bundle.originals} if "originals" in methods and seed == seeds[0] else {}
        if "generated" in methods:
            t0 = time.perf_counter()
            vectors, finite = sample_finite(bundle, n, sampler, steps, g, device)
            sets["generated"], nonfinite = vectors[finite], nonfinite + int((~finite).sum())
            timings["sample"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        if defences:
            sets.update(defence_sets(bundle.task, bundle.layout, engine.target.state, train, test, g,
                                     k_defence or len(bundle.originals), device, defences))
        timings["defences"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        for name, metrics in measure(engine, sets, reference=None)["metrics"].items():
            runs[name].append(metrics)
        timings["evaluate"] += time.perf_counter() - t0

    as_is = engine.as_is()
    victim_info = {"name": engine.target.name, **as_is, "trigger": engine.trigger.to_dict(),
                   "trigger_source": target.trigger_source}
    return {"task": bundle.task.name, "victim": victim_info,
            "n": n, "seeds": seeds, "sampler": sampler, "layers": bundle.names,
            "methods": {name: _pooled(runs[name]) for name in methods},
            "nonfinite": nonfinite, "timings_s": timings, "device": str(device)}


def _pooled(per_seed: list[dict]) -> dict:
    """One method's seeds pooled: every value, a summary of each metric, each seed's means and their spread."""
    m = {metric: [v for run in per_seed for v in run[metric]] for metric in METRICS}
    m["summary"] = {metric: summary(m[metric]) for metric in METRICS}
    m["per_seed"] = {metric: [summary(run[metric])["mean"] for run in per_seed] for metric in METRICS}
    m["spread"] = {metric: _mean_std(vals) for metric, vals in m["per_seed"].items()}
    return m


def _mean_std(values: list[float | None]) -> dict[str, float | None]:
    vals = torch.tensor([v for v in values if v is not None], dtype=torch.float64)
    if len(vals) == 0:
        return {"mean": None, "std": None}
    return {"mean": vals.mean().item(), "std": vals.std().item() if len(vals) > 1 else 0.0}


def table_rows(target: dict, sources: dict[str, dict]) -> list[list]:
    """The transfer table (TABLE_HEADERS): the target as-is, then every source's means and best DER."""
    rows = [[f"target as-is ({target['name']})", 1, round(target["acc"], 2), round(target["asr"], 2),
             round(target["ra"], 2), 0.5, 0.5]]
    for name, m in sources.items():
        if not m.get("acc"):
            rows.append([name, 0, None, None, None, None, None])
            continue
        acc, asr, ra, d = (sum(m[k]) / len(m[k]) for k in METRICS)
        rows.append([name, len(m["acc"]), round(acc, 2), round(asr, 2), round(ra, 2), round(d, 3), round(max(m["der"]), 3)])
    return rows


def table(report: dict) -> str:
    """The transfer table as text; with several seeds each mean is the mean ± std of the seeds' means."""
    v = report["victim"]
    several = len(report.get("seeds", [])) > 1
    lines = [f"victim {v['name']}: ACC {v['acc']:.2f}  ASR {v['asr']:.2f}  RA {v['ra']:.2f}"
             + (f"  (seeds {', '.join(map(str, report['seeds']))}: mean ± std over seeds)" if several else ""),
             trigger_line(v),
             f"{'method':<10} {'n':>5} {'ACC':>13} {'ASR':>13} {'RA':>13} {'DER':>13} {'DER best':>9}"]
    for row, (name, m) in zip(table_rows(v, report["methods"])[1:], report["methods"].items()):
        if not row[1]:
            lines.append(f"{name:<10} {0:>5}  (no finite parameter sets)")
            continue
        cells = [f"{m['spread'][k]['mean']:{f}} ± {m['spread'][k]['std']:{f}}" if several else f"{cell:{f}}"
                 for k, f, cell in zip(METRICS, (".2f", ".2f", ".2f", ".3f"), row[2:6])]
        lines.append(f"{name:<10} {row[1]:>5} " + " ".join(f"{c:>13}" for c in cells) + f" {row[6]:>9.3f}")
    return "\n".join(lines)
