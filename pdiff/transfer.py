"""Transfer to a backdoored victim: generated layers beside the defences a generator must beat.

Every method yields parameter sets for the bundle's train_layer, spliced into the same victim
and evaluated by the same engine: generated (sampled from the bundle), originals (the clean
checkpoints as they are), finetune (the victim's own train_layer trained on clean data with
the collection's step budget) and reinit (the same layers re-initialised, then trained so).
stitch+generated puts the generated sets after a stitch (stitch.py) fitted on the clean budget from the
victim's features to the clean base's; stitch+clean-layers, its control, the base's own values there.
"""
from __future__ import annotations

import time

import torch

from pdiff.baselines import DEFENCES, defence_sets
from pdiff.bundle import Bundle
from pdiff.data import Split
from pdiff.evaluate import TargetEngine, measure, summary
from pdiff.params import own_values
from pdiff.sample import sample_finite
from pdiff.stitch import clean_budget_split, stitched_engine
from pdiff.targets import resolve_target

STITCHED = ("stitch+generated", "stitch+clean-layers")
METHODS = ("generated", "originals", "finetune", "reinit", *STITCHED)
CLEAN_BUDGET = 0.05  # share of the training set a defence may use (BackdoorBench's 5 %)
METRICS = ("acc", "asr", "ra", "der")
TABLE_HEADERS = ["method", "n", "ACC mean", "ASR mean", "RA mean", "DER mean", "DER best"]


def run_transfer(bundle: Bundle, victim: str, n: int, seeds: int | list[int], train: Split | None, test: Split,
                 sampler: str = "ddim", steps: int | None = 50, k_defence: int | None = None, device="cpu",
                 methods: tuple[str, ...] = METHODS, clean_budget: float = CLEAN_BUDGET, stitch_epochs: int = 0) -> dict:
    """Every method's ACC / ASR / RA / DER lists on the victim, with a summary of each.

    With several seeds, each seed samples and trains the defences afresh; the lists hold every
    seed's values in seed order, `per_seed` each seed's means, and `spread` the mean and standard
    deviation of those means. The originals do not depend on the seed: evaluated once, one entry.
    The stitch methods fit one stitch on the first `clean_budget` of `train` (`stitch_epochs`: cross-entropy
    epochs after least squares).
    """
    seeds = [seeds] if isinstance(seeds, int) else list(seeds)
    if not seeds:
        raise ValueError("give at least one seed")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    engine = TargetEngine(bundle.task, bundle.layout, resolve_target(bundle, victim), test, device=device)

    defences = [m for m in DEFENCES if m in methods]
    runs = {m: [] for m in methods}          # per method, one metrics dict per seed
    timings = {"sample": 0.0, "defences": 0.0, "evaluate": 0.0}
    stitched, stitch_info = None, None
    if set(STITCHED) & set(methods):
        stitched, stitch_info = _stitched(bundle, engine, train, test, clean_budget, stitch_epochs, device)
        timings["stitch"] = stitch_info["seconds"]
    nonfinite = 0
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        sets = {"originals": bundle.originals} if "originals" in methods and seed == seeds[0] else {}
        if "generated" in methods or "stitch+generated" in methods:
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
        if stitched is not None:
            for name, metrics in measure(stitched, _stitched_sets(bundle, sets, methods, seed == seeds[0]),
                                         reference=None)["metrics"].items():
                runs[name].append(metrics)
        sets = {k: v for k, v in sets.items() if k in methods}
        for name, metrics in measure(engine, sets, reference=None)["metrics"].items():
            runs[name].append(metrics)
        timings["evaluate"] += time.perf_counter() - t0

    as_is = engine.as_is()
    return {"task": bundle.task.name, "victim": {"name": engine.target.name, **as_is, "trigger": engine.trigger.to_dict()},
            "n": n, "seeds": seeds, "sampler": sampler, "layers": bundle.names,
            "methods": {name: _pooled(runs[name]) for name in methods},
            "nonfinite": nonfinite, "timings_s": timings, "device": str(device),
            **({"stitch": stitch_info} if stitch_info else {})}


def _stitched(bundle: Bundle, engine: TargetEngine, train: Split | None, test: Split, fraction: float, epochs: int,
              device) -> tuple[TargetEngine, dict]:
    """The victim stitched onto the clean base's tail, the stitch fitted on the clean budget: (engine, info)."""
    if train is None:
        raise ValueError("the stitch methods need the training split: the stitch is fitted on its clean budget")
    budget = clean_budget_split(train, fraction, bundle.task.recipe.batch_size)
    stitched, info = stitched_engine(bundle.task, bundle.layout, engine.target, bundle.base_state, test, budget,
                                     device=device, reference=engine.as_is(), tune_epochs=epochs)
    return stitched, {**info, "clean_budget": fraction}


def _stitched_sets(bundle: Bundle, sets: dict, methods: tuple[str, ...], first_seed: bool) -> dict:
    """The parameter sets that go after the stitch: the generated ones, and the base's own layers (one
    model, the same whatever the seed: evaluated with the first seed only)."""
    out = {"stitch+generated": sets["generated"]} if "stitch+generated" in methods else {}
    if "stitch+clean-layers" in methods and first_seed:
        out["stitch+clean-layers"] = own_values(bundle.base_state, bundle.layout)
    return out


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
             f"{'method':<19} {'n':>5} {'ACC':>13} {'ASR':>13} {'RA':>13} {'DER':>13} {'DER best':>9}"]
    for row, (name, m) in zip(table_rows(v, report["methods"])[1:], report["methods"].items()):
        if not row[1]:
            lines.append(f"{name:<19} {0:>5}  (no finite parameter sets)")
            continue
        cells = [f"{m['spread'][k]['mean']:{f}} ± {m['spread'][k]['std']:{f}}" if several else f"{cell:{f}}"
                 for k, f, cell in zip(METRICS, (".2f", ".2f", ".2f", ".3f"), row[2:6])]
        lines.append(f"{name:<19} {row[1]:>5} " + " ".join(f"{c:>13}" for c in cells) + f" {row[6]:>9.3f}")
    return "\n".join(lines)
