"""Transfer to a backdoored victim: generated layers beside clean-weight controls and the field's defences.

Every method is measured on the same victim by the same engine (ACC / ASR / RA, and DER against the victim
as it is), and says how much clean data it used:
- `generated`: sampled from the bundle, spliced into the victim (no clean images, but the generator was
  trained on the clean model's checkpoints);
- controls, what clean weights alone do: `originals` (those checkpoints as they are), `average` (their mean,
  one model) and `clean-layers` (the clean base's own values of the spliced layers, one model);
- defences (`pdiff.defences`) at a clean budget, by default 5 % of the training set drawn per seed, each
  at its final checkpoint: `finetune` and `reinit` of the spliced layers (their run-mean as an extra,
  labelled column), `ft` and `fp` of the whole victim, and the data-free `clp`;
- for victims that share no features with the clean trunk: `stitch+generated`, the generated sets after a
  stitch (`pdiff.stitch`, fitted on the first seed's clean budget from the victim's features to the clean
  base's at the splice point), and its control `stitch+clean-layers` (the base's own layers after it).
"""
from __future__ import annotations

import time
from dataclasses import replace

import torch

from pdiff.core.params import own_vector
from pdiff.core.settings import SamplingSpec, TransferSettings, settings_dict
from pdiff.data.plan import RunData
from pdiff.data.triggers import trigger_line
from pdiff.generator.bundle import Bundle
from pdiff.generator.sampling import draw
from pdiff.measure.baselines import average
from pdiff.measure.defences import DEFENCES, LAYER_DEFENCES, MODEL_DEFENCES, Defended, hyper_parameters, run_defence
from pdiff.measure.engine import TargetEngine, measure
from pdiff.measure.similarity import summary
from pdiff.measure.sources import names, source
from pdiff.measure.stitch import STITCHED, stitched_engine
from pdiff.measure.targets import Target
from pdiff.studies import formats

FORMAT, FORMAT_VERSION = formats.TRANSFER, formats.VERSION
CONTROLS = names("control")  # what clean weights alone do
METHODS = ("generated", *CONTROLS, *DEFENCES, *STITCHED)
METRICS = ("acc", "asr", "ra", "der")
TABLE_HEADERS = ["method", "clean data", "n", "ACC mean", "ASR mean", "RA mean", "DER mean", "DER best",
                 "DER std (models)", "DER run mean", "time (s)"]


def clean_data(name: str, images: int = 0) -> str:
    """The clean data a method used, as the table states it: budget images, and the clean weights behind it."""
    s = source(name)
    weights = "clean checkpoints" if s.checkpoints else "clean model" if s.model else ""
    return (f"{images} images" if s.budget else "0") + (f" (+ {weights})" if weights else "")


def control_sets(bundle: Bundle, methods) -> dict[str, torch.Tensor]:
    """The controls asked for, as layout vectors: originals (K, P), average and clean-layers (1, P)."""
    sets = {"originals": bundle.originals, "average": average(bundle.originals),
            "clean-layers": own_vector(bundle.base_state, bundle.layout)}
    return {name: v for name, v in sets.items() if name in methods}


def check_methods(methods) -> tuple[str, ...]:
    """The methods asked for (empty: all), unknown names refused."""
    methods = tuple(methods) or METHODS
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    return methods


def trained_methods(methods) -> list[str]:
    """The methods asked for that train or fit on the clean budget."""
    return [m for m in check_methods(methods) if source(m).budget]


def run_transfer(bundle: Bundle, victim: Target, data: RunData, sampling: SamplingSpec,
                 settings: TransferSettings = TransferSettings(), device="cpu") -> dict:
    """Every method's ACC / ASR / RA / DER lists on the victim, with a summary of each.

    Each seed of settings.seeds samples (sampling's n, sampler and steps, that seed), draws its clean budget
    (data.budget) and trains the defences afresh; the lists hold every seed's values in seed order, `per_seed`
    each seed's means, `spread` the mean and standard deviation of those means, `model_std` the mean over seeds
    of the std over models within a seed. Methods that do not depend on the seed (sources.Source.seeded) are
    measured once, with the first seed. The stitch is fitted on the first seed's budget.
    """
    methods, seeds = check_methods(settings.methods), list(settings.seeds)
    trained = trained_methods(methods)
    if trained and data.train is None:
        raise ValueError(f"the {', '.join(trained)} methods train on clean data; give the training split")
    if victim.trigger is None:
        raise ValueError(f"transfer measures backdoor removal, but target {victim.name!r} has no trigger "
                         f"({victim.trigger_source or 'the clean model'})")
    engine = TargetEngine(bundle.task, bundle.layout, victim, data.test, device=device)
    defence = replace(settings.defence, k=settings.defence.k or len(bundle.originals))
    # the defences draw from their own generator per seed (budget first): the same whatever n is. Budgets are
    # drawn before anything runs: a bad one fails at once
    gens = {seed: torch.Generator().manual_seed(seed) for seed in seeds}
    budgets = {seed: data.budget(gens[seed]) if trained else None for seed in seeds}
    runs = {m: [] for m in methods}      # per method, one metrics dict per seed
    extra = {m: {"seconds": [], "run_mean": [], "details": []} for m in ("generated", *methods)}
    timings, nonfinite = {"sample": 0.0, "evaluate": 0.0}, 0
    stitched, stitch_info = _stitched(engine, bundle, budgets[seeds[0]], settings, extra)
    for seed in seeds:
        first = seed == seeds[0]
        sets = control_sets(bundle, methods) if first else {}
        if "generated" in methods or "stitch+generated" in methods:
            samples = _timed(extra["generated"], draw, bundle, replace(sampling, seed=seed), device)
            sets["generated"], nonfinite = samples.vectors[samples.finite], nonfinite + int((~samples.finite).sum())

        def defend(name: str, seed=seed) -> Defended:  # this seed's budget and generator
            return _defended(extra[name], run_defence(name, bundle.task, bundle.layout, victim.state, budgets[seed],
                                                      gens[seed], defence, device))
        for name in (m for m in LAYER_DEFENCES if m in methods):
            sets[name] = defend(name).vectors
        t0 = time.perf_counter()
        _measure_sets(bundle, engine, stitched, sets, methods, first, runs, extra)
        timings["evaluate"] += time.perf_counter() - t0
        for name in (m for m in MODEL_DEFENCES if m in methods and (source(m).seeded or first)):
            runs[name].append(engine.measure_state(defend(name).state, name))
    timings["sample"] = sum(extra["generated"]["seconds"])  # also when only stitch+generated sampled
    images = len(next(iter(budgets.values())).labels) if trained else 0
    victim_info = {"name": victim.name, **engine.as_is(), "trigger": victim.trigger.to_dict(),
                   "trigger_source": victim.trigger_source}
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            "settings": settings_dict(sampling, data.spec, settings), "task": bundle.task.name, "victim": victim_info,
            "n": sampling.n, "seeds": seeds, "sampler": sampling.sampler, "layers": bundle.names,
            "clean_budget": {"fraction": data.spec.budget, "images": images,
                             "drawn": "at random from the training split, per seed"},
            "defence_settings": hyper_parameters(defence),
            "methods": {name: {**_pooled(runs[name], extra[name]), "clean_data": clean_data(name, images),
                               "clean_images": images if name in trained else 0} for name in methods},
            "nonfinite": nonfinite, "device": str(device), **({"stitch": stitch_info} if stitch_info else {}),
            "timings_s": {**timings, "per_method": {m: sum(extra[m]["seconds"]) for m in methods}}}


def _measure_sets(bundle: Bundle, engine: TargetEngine, stitched: TargetEngine | None, sets: dict, methods,
                  first_seed: bool, runs: dict, extra: dict) -> None:
    """One seed's parameter sets measured on the victim (and, for the stitch methods, on the stitched victim);
    each method's metrics appended to `runs`. A layer defence's run: its last checkpoint is the defence, the
    run's mean a labelled extra."""
    if stitched is not None:
        for name, metrics in measure(stitched, _stitched_sets(bundle, sets, methods, first_seed),
                                     reference=None)["metrics"].items():
            runs[name].append(metrics)
    sets = {k: v for k, v in sets.items() if k in methods}
    for name, metrics in measure(engine, sets, reference=None)["metrics"].items():
        if name in LAYER_DEFENCES:
            extra[name]["run_mean"].append({k: sum(v) / len(v) for k, v in metrics.items()})
            metrics = {k: v[-1:] for k, v in metrics.items()}
        runs[name].append(metrics)


def _stitched(engine: TargetEngine, bundle: Bundle, budget, settings: TransferSettings,
              extra: dict) -> tuple[TargetEngine | None, dict | None]:
    """Where a stitch method is asked for: the victim stitched onto the clean base's tail, the stitch fitted on
    `budget` (its seconds counted to both stitch methods); else (None, None)."""
    if not set(STITCHED) & set(check_methods(settings.methods)):
        return None, None
    t0 = time.perf_counter()
    stitched, info = stitched_engine(engine, bundle.base_state, budget, settings.stitch)
    for name in STITCHED:
        extra[name]["seconds"].append(time.perf_counter() - t0)
    return stitched, {**info, "clean_images": len(budget.labels)}


def _stitched_sets(bundle: Bundle, sets: dict, methods: tuple[str, ...], first_seed: bool) -> dict:
    """The parameter sets that go after the stitch: the generated ones, and the base's own layers (one
    model, the same whatever the seed: evaluated with the first seed only)."""
    out = {"stitch+generated": sets["generated"]} if "stitch+generated" in methods else {}
    if "stitch+clean-layers" in methods and first_seed:
        out["stitch+clean-layers"] = own_vector(bundle.base_state, bundle.layout)
    return out


def _timed(extra: dict, fn, *args):
    """fn(*args), its wall time appended to extra["seconds"]."""
    t0 = time.perf_counter()
    out = fn(*args)
    extra["seconds"].append(time.perf_counter() - t0)
    return out


def _defended(extra: dict, d: Defended) -> Defended:
    """d, its wall time (and what it did, for a whole-model defence) recorded in `extra`."""
    extra["seconds"].append(d.seconds)
    if d.details is not None:
        extra["details"].append(d.details)
    return d


def _pooled(per_seed: list[dict], extra: dict) -> dict:
    """One method's seeds pooled: every value, a summary of each metric, each seed's means and their spread,
    the std over models within each seed; its wall time per seed, run-means and what it did, where it has them."""
    m = {metric: [v for run in per_seed for v in run[metric]] for metric in METRICS}
    m["summary"] = {metric: summary(m[metric]) for metric in METRICS}
    m["per_seed"] = {metric: [summary(run[metric])["mean"] for run in per_seed] for metric in METRICS}
    m["spread"] = {metric: _mean_std(vals) for metric, vals in m["per_seed"].items()}
    m["per_seed_model_std"] = {metric: [summary(run[metric])["std"] if len(run[metric]) > 1 else None
                                        for run in per_seed] for metric in METRICS}
    m["model_std"] = {metric: _mean_std(v)["mean"] for metric, v in m["per_seed_model_std"].items()}
    m["seconds"] = extra["seconds"]
    if extra["run_mean"]:
        m["run_mean"] = {metric: _mean_std([r[metric] for r in extra["run_mean"]])["mean"] for metric in METRICS}
    if extra["details"]:
        m["details"] = extra["details"]
    return m


def _mean_std(values: list[float | None]) -> dict[str, float | None]:
    vals = torch.tensor([v for v in values if v is not None], dtype=torch.float64)
    if len(vals) == 0:
        return {"mean": None, "std": None}
    return {"mean": vals.mean().item(), "std": vals.std().item() if len(vals) > 1 else 0.0}


def _round(value, digits):
    return None if value is None else round(value, digits)


def table_rows(target: dict, sources: dict[str, dict]) -> list[list]:
    """The transfer table (TABLE_HEADERS): the target as-is, then every source's clean data, means, best DER,
    DER std over models (within a seed), run-mean DER (finetune / reinit) and wall time per run."""
    rows = [[f"target as-is ({target['name']})", "-", 1, round(target["acc"], 2), round(target["asr"], 2),
             round(target["ra"], 2), 0.5, 0.5, None, None, None]]
    for name, m in sources.items():
        data = m.get("clean_data", clean_data(name, m.get("clean_images", 0)))
        if not m.get("acc"):
            rows.append([name, data, 0, *[None] * (len(TABLE_HEADERS) - 3)])
            continue
        acc, asr, ra, d = (sum(m[k]) / len(m[k]) for k in METRICS)
        std = m["model_std"]["der"] if "model_std" in m else (summary(m["der"])["std"] if len(m["der"]) > 1 else None)
        seconds = m.get("seconds") or []
        rows.append([name, data, len(m["acc"]), round(acc, 2), round(asr, 2), round(ra, 2), round(d, 3),
                     round(max(m["der"]), 3), _round(std, 3), _round(m.get("run_mean", {}).get("der"), 3),
                     _round(sum(seconds) / len(seconds), 1) if seconds else None])
    return rows


def table(report: dict) -> str:
    """The transfer table as text; with several seeds each mean is the mean ± std of the seeds' means."""
    v, b = report["victim"], report.get("clean_budget", {})
    several = len(report.get("seeds", [])) > 1
    lines = [f"victim {v['name']}: ACC {v['acc']:.2f}  ASR {v['asr']:.2f}  RA {v['ra']:.2f}"
             + (f"  (seeds {', '.join(map(str, report['seeds']))}: mean ± std over seeds)" if several else ""),
             trigger_line(v),
             f"clean budget: {b.get('fraction')} of the training split = {b.get('images')} images per seed; "
             "each defence at its final checkpoint",
             f"{'method':<19} {'clean data':<33} {'n':>5} {'ACC':>13} {'ASR':>13} {'RA':>13} {'DER':>13} "
             f"{'DER best':>8} {'DER std':>7} {'run-mean':>8} {'time s':>7}"]
    for row, (name, m) in zip(table_rows(v, report["methods"])[1:], report["methods"].items()):
        if not row[2]:
            lines.append(f"{name:<19} {row[1]:<33} {0:>5}  (no finite parameter sets)")
            continue
        cells = [f"{m['spread'][k]['mean']:{f}} ± {m['spread'][k]['std']:{f}}" if several else f"{cell:{f}}"
                 for k, f, cell in zip(METRICS, (".2f", ".2f", ".2f", ".3f"), row[3:7])]
        tail = [f"{c:>{w}{f}}" if c is not None else f"{'-':>{w}}" for c, w, f in zip(row[7:], (8, 7, 8, 7),
                                                                                     (".3f", ".3f", ".3f", ".1f"))]
        lines.append(f"{name:<19} {row[1]:<33} {row[2]:>5} " + " ".join(f"{c:>13}" for c in cells) + " "
                     + " ".join(tail))
    if "stitch" in report:
        st = report["stitch"]
        lines.append(f"stitch: fitted on {st['images']} clean images at stage {st['stage']}, R^2 {st['r2']:.3f}, "
                     f"shrink {st.get('shrink', 0.0):g}, {st['tune_epochs']} cross-entropy epochs")
    return "\n".join(lines)
