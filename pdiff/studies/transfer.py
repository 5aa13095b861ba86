"""Transfer to a backdoored victim: generated layers beside clean-weight controls and the field's defences.

Every method is measured on the same victim by the same engine (ACC / ASR / RA, and DER against the victim as it
is), states the clean resources it used (measure.sources.clean_resources: clean images it trained or fitted on,
images behind the clean model or checkpoints it uses, how many checkpoints), and is attacked afterwards to see
whether its low ASR holds (measure.revival):
- `generated`: sampled from the bundle, spliced into the victim;
- controls: `originals`, `average`, `clean-layers` (the bundle's clean model's own layers), `clean-model` (a clean
  model as it is: the bundle's reference model, else its base), `donor` (a budget donor's bundle: its base as it
  is), `probe` (a linear head on the victim's own features, fitted on the budget);
- defences (measure.defences) on the clean budget, each at its final checkpoint: `finetune`, `reinit`, `ft`, `fp`,
  `fst`, `anp` and the data-free `clp`;
- through a stitch fitted on each seed's budget from the victim's features to the clean model's: `stitch+generated`,
  `stitch+clean-layers` and `stitch+victim-tail` (the victim's own layers after the stitch).
With a budget donor's bundle every clean-weights method takes the donor's weights, and every method that trains
takes the same budget the donor was trained on (data.plan.DataSpec.budget_seed). The revival attack's length is
calibrated per seed on the validation split (measure.revival.calibrate); each revived ASR is also given as its excess
over the floor, a model that never held the backdoor under the same attack.

By default a run measures FIRST_LOOK, the methods a first look can wait for on two CPU cores; `--methods all` adds
ANP (2,000 mask steps) and the layer defences. Each method prints one progress line with an estimate of what is left.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field, replace

import torch

from pdiff.core.params import own_vector
from pdiff.core.settings import SamplingSpec, TransferSettings, settings_dict
from pdiff.core.splice import splice
from pdiff.data.datasets import DATASETS, Split
from pdiff.data.plan import RunData
from pdiff.data.triggers import trigger_line
from pdiff.generator.bundle import Bundle
from pdiff.generator.conditions import resolve
from pdiff.generator.sampling import draw
from pdiff.measure.assembly import Assembled, Failed, assemble, bundle_defence, ledger
from pdiff.measure.defences import DEFENCES, LAYER_DEFENCES, hyper_parameters, run_defence
from pdiff.measure.engine import TargetEngine, measure
from pdiff.measure.probe import probe_for
from pdiff.measure.revival import REVIVAL, Composed, Stages, calibrate, measured, revived
from pdiff.measure.similarity import summary
from pdiff.measure.sources import METRICS, entry, names, source
from pdiff.measure.stitch import STITCHED, StitchLayer, stitched_engine
from pdiff.measure.targets import Target
from pdiff.models.loading import check_architecture
from pdiff.studies import formats

FORMAT, FORMAT_VERSION = formats.TRANSFER, formats.VERSION
CONTROLS = names("control")   # what clean weights (or the budget with the victim's own features) alone do
METHODS = ("generated", *CONTROLS, *DEFENCES, *STITCHED)
# the default set: every control, the whole-model defences but ANP, the stitch; 117 s on two quiet CPU cores at n 20
# (ANP's 2,000 mask steps add about 6 minutes, the layer defences about 2 each: `--methods all`)
FIRST_LOOK = tuple(m for m in METHODS if m not in ("anp", *LAYER_DEFENCES))
# rough relative cost of each unit of a run on a CPU (seconds at the defaults, quiet): the progress line's estimate
_COST = {"generated": 20, "probe": 40, "ft": 60, "fp": 65, "fst": 60, "clp": 1, "anp": 300, "finetune": 60,
         "reinit": 60, "stitch": 90, "revival": 4, "calibration": 30}
TABLE_HEADERS = ["method", "clean images", "model images", "checkpoints", "n", "ACC mean", "ASR mean", "RA mean",
                 "DER mean", "DER best", "DER std (models)", "ASR revived", "time (s)"]


def clean_data(name: str, images: int = 0) -> str:
    """The clean data a method used, in words: budget images, and the clean weights behind it."""
    s = source(name)
    weights = "clean checkpoints" if s.checkpoints else "clean model" if s.model else ""
    return (f"{images} images" if s.budget else "0") + (f" (+ {weights})" if weights else "")


def check_methods(methods) -> tuple[str, ...]:
    """The methods asked for (empty: FIRST_LOOK; "all": every method), unknown names refused."""
    methods = tuple(methods) or FIRST_LOOK
    if methods == ("all",):
        methods = METHODS
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"unknown methods {unknown}; known: {', '.join(METHODS)}")
    return methods


def trained_methods(methods) -> list[str]:
    """The methods asked for that train or fit on the clean budget."""
    return [m for m in check_methods(methods) if source(m).budget]


class Progress:
    """One line on stderr per finished unit of a run (a method, the stitch, the revival of a method's models), with
    the time it took and an estimate of what is left: the units' rough costs (_COST) scaled by the pace so far."""

    def __init__(self, units: list[str], stream=None):
        self.left, self.t0, self.spent, self.stream = list(units), time.perf_counter(), 0.0, stream or sys.stderr
        self.last = self.t0

    def done(self, unit: str) -> None:
        if unit in self.left:
            self.left.remove(unit)
        now = time.perf_counter()
        self.spent += _COST.get(unit.split(" ")[0], 10)
        pace = (now - self.t0) / self.spent
        left = sum(_COST.get(u.split(" ")[0], 10) for u in self.left) * pace
        print(f"transfer: {unit} done in {now - self.last:.0f} s; about {left / 60:.0f} min left "
              f"({len(self.left)} steps)", file=self.stream, flush=True)
        self.last = now


def progress_units(methods: tuple[str, ...], seeds: list[int], revived: int) -> list[str]:
    """The units a run will report, in order, for its estimate."""
    units = []
    for i, seed in enumerate(seeds):
        wanted = [m for m in methods if i == 0 or source(m).seeded]
        if {"generated", "stitch+generated"} & set(wanted):
            units.append(f"generated seed {seed}")
        units += [f"{m} seed {seed}" for m in wanted if m in DEFENCES or m == "probe"]
        if set(STITCHED) & set(wanted):
            units.append(f"stitch seed {seed}")
        if revived:
            units += [f"calibration seed {seed}"] + [f"revival {m} seed {seed}" for m in wanted]
    return units


@dataclass
class _Run:
    """One transfer run: the bundle, the victim's engine and what every method measured, seed by seed."""
    bundle: Bundle
    engine: TargetEngine
    settings: TransferSettings
    methods: tuple[str, ...]
    device: str = "cpu"
    validation: Split | None = None              # where the revival attack is calibrated
    progress: Progress | None = None
    runs: dict = field(default_factory=dict)     # method -> one metrics dict per seed
    extra: dict = field(default_factory=dict)    # method -> seconds, run_mean, details, revived, failed per seed
    stitch: list = field(default_factory=list)   # the stitch's info, per seed
    calibration: list = field(default_factory=list)  # the revival attack's calibration, per seed

    def __post_init__(self):
        self.runs = {m: [] for m in self.methods}
        self.extra = {m: {"seconds": [], "run_mean": [], "details": [], "revived": [], "failed": []}
                      for m in ("generated", *self.methods)}

    def tick(self, unit: str, seed: int) -> None:
        if self.progress is not None:
            self.progress.done(f"{unit} seed {seed}")

    def wanted(self, name: str, first: bool) -> bool:
        return name in self.methods and (first or source(name).seeded)

    def seed(self, spec: SamplingSpec, budget: Split | None, g: torch.Generator, first: bool) -> None:
        """Every method of one seed: measured, then (given a budget) attacked by the calibrated revival recipe."""
        models = {}   # method -> the first few repaired models, built when revived
        self.seed_number = spec.seed
        vectors = self.layer_sets(spec, budget, g, first)
        on_victim = {k: v for k, v in vectors.items() if k in self.methods}  # generated may be for the stitch only
        for name, metrics in measure(self.engine, on_victim, reference=None)["metrics"].items():
            if name in LAYER_DEFENCES:  # the run's last checkpoint is the defence; its mean a labelled extra
                self.extra[name]["run_mean"].append({k: sum(v) / len(v) for k, v in metrics.items()})
                metrics, vectors[name] = {k: v[-1:] for k, v in metrics.items()}, vectors[name][-1:]
            self.runs[name].append(metrics)
            models[name] = self.spliced(self.engine, vectors[name])
        if budget is not None and set(STITCHED) & set(self.methods):
            models.update(self.through_stitch(vectors.get("generated"), budget, first))
            self.tick("stitch", spec.seed)
        states = self.whole_models(budget, g, first)
        for name, state in states.items():
            self.runs[name].append(self.engine.measure_state(state, name))
            models[name] = [lambda state=state: check_architecture(self.bundle.task, state)]
        if "probe" in self.methods and budget is not None:
            models["probe"] = self.probe(budget)
            self.tick("probe", spec.seed)
        if budget is not None and self.settings.revived:
            self.revive(models, budget, 10_000 + spec.seed, states.get("fp"), g)

    def layer_sets(self, spec: SamplingSpec, budget: Split | None, g: torch.Generator, first: bool) -> dict:
        """The layout vectors measured on the victim itself: generated, the layer controls, the layer defences."""
        sets = self.assemble("layers", "control", budget, g, first).layers
        if {"generated", "stitch+generated"} & set(self.methods):
            t0 = time.perf_counter()
            samples = draw(self.bundle, spec, self.device, target_state=self.engine.target.state)
            self.extra["generated"]["seconds"].append(time.perf_counter() - t0)
            self.tick("generated", spec.seed)
            sets["generated"] = samples.vectors[samples.finite]
            self.extra["generated"]["nonfinite"] = (self.extra["generated"].get("nonfinite", 0)
                                                    + int((~samples.finite).sum()))
        sets.update(self.assemble("layers", "defence", budget, g, first).layers)
        return {k: v for k, v in sets.items() if k in self.methods or k == "generated"}

    def whole_models(self, budget: Split | None, g: torch.Generator, first: bool) -> dict[str, dict]:
        """The whole models: the clean model and the donor as they are, the whole-model defences."""
        return self.assemble("whole", ("control", "defence"), budget, g, first).whole

    def assemble(self, kind: str, families, budget: Split | None, g: torch.Generator, first: bool) -> Assembled:
        """This seed's sources of `families` that yield `kind` (measure.assembly), each defence timed and a failed one
        marked (its reason said in one line)."""
        wanted = [m for m in self.methods if self.wanted(m, first) and source(m).kind == kind
                  and source(m).family in families]
        made = assemble(self.bundle, wanted, self.engine.target.state, budget, g, self.settings.defence, self.device,
                        done=lambda name: self.tick(name, self.seed_number))
        for name, d in made.defences.items():
            self.extra[name]["seconds"].append(d.seconds)
            if isinstance(d, Failed):
                print(f"note: {d.reason}", file=sys.stderr, flush=True)
                self.extra[name]["failed"].append(d.reason)
            elif d.details is not None:
                self.extra[name]["details"].append(d.details)
        return made

    def through_stitch(self, generated: torch.Tensor | None, budget: Split, first: bool) -> dict:
        """The stitch methods, the stitch fitted on this seed's budget; returns their repaired-model builders."""
        t0 = time.perf_counter()
        stitched, info = stitched_engine(self.engine, self.bundle.base_state, budget, self.settings.stitch)
        self.stitch.append({**info, "clean_images": len(budget.labels)})
        sets = {"stitch+generated": generated, "stitch+clean-layers": own_vector(self.bundle.base_state,
                                                                                 self.bundle.layout)}
        engines = {name: stitched for name in sets}
        if "stitch+victim-tail" in self.methods:
            engines["stitch+victim-tail"], _ = stitched_engine(self.engine, self.bundle.base_state, budget,
                                                               self.settings.stitch, tail_state=self.engine.target.state)
            sets["stitch+victim-tail"] = own_vector(self.engine.target.state, self.bundle.layout)
        models = {}
        for name in (n for n in sets if n in self.methods and sets[n] is not None):
            self.runs[name].append(measure(engines[name], {name: sets[name]}, reference=None)["metrics"][name])
            self.extra[name]["seconds"].append(time.perf_counter() - t0)
            models[name] = self.spliced(engines[name], sets[name])
        return models

    def probe(self, budget: Split) -> list:
        """A linear probe on the victim's features at the splice point, fitted on the budget, measured whole."""
        t0 = time.perf_counter()
        trunk, start = self.engine.clean.model, self.engine.clean.start
        probe = probe_for(trunk, start, budget, DATASETS[self.bundle.task.dataset].classes, self.device)
        model = Composed(trunk, start, None, probe)
        self.runs["probe"].append(self.engine.metrics({k: [v] for k, v in measured(
            model, self.engine.test, self.engine.trigger, self.device).items()}))
        self.extra["probe"]["seconds"].append(time.perf_counter() - t0)
        return [lambda: model]

    def spliced(self, engine: TargetEngine, vectors: torch.Tensor) -> list:
        """Builders of the first few repaired models of a layer method: its vectors spliced into the engine's target,
        behind the engine's stitch where it has one."""
        task, layout, layers = self.bundle.task, self.bundle.layout, engine.layers

        def build(v: torch.Tensor):
            tail = check_architecture(task, splice(engine.target.state, v, layout, layers))
            if engine.feature_map is None:
                return tail
            trunk = check_architecture(task, self.engine.target.state)
            return Composed(trunk, engine.clean.start, StitchLayer(engine.feature_map.fn), Stages(tail, engine.clean.start))
        return [lambda v=v: build(v) for v in vectors[:self.settings.revived]]

    def revive(self, models: dict, budget: Split, seed: int, fp_state: dict | None, g: torch.Generator) -> None:
        """The revival attack on the first few models of every method, its length calibrated on the validation split
        first: the victim repaired by fine-pruning (run here if the methods hold no fp) against a model that never
        held the backdoor (the budget donor, else the clean model)."""
        t = self.engine.trigger
        steps = REVIVAL["steps"]
        if self.validation is not None:
            if fp_state is None:
                fp_state = run_defence("fp", self.bundle.task, self.bundle.layout, self.engine.target.state, budget,
                                       g, self.settings.defence, self.device).state
            never_held = self.bundle.base_state if self.bundle.budget_donor else self.bundle.clean_model()[0]
            c = calibrate(check_architecture(self.bundle.task, fp_state), check_architecture(self.bundle.task,
                                                                                              never_held),
                          budget, self.validation, t, seed, self.device)
            c["never_held"] = "the budget donor" if self.bundle.budget_donor else "the clean model"
            if not c["reached"]:
                print(f"note: the revival attack did not bring the fine-pruned victim back to {c['target_asr']:g} % "
                      f"ASR within {c['ladder'][-1]} steps on the validation split; it runs {c['steps']} steps, marked "
                      "not calibrated", file=sys.stderr, flush=True)
            self.calibration.append(c)
            steps = c["steps"]
            self.tick("calibration", self.seed_number)
        for name, builders in models.items():
            r = revived([b() for b in builders], budget, self.engine.test, t, seed, steps, self.device)
            if self.calibration:
                r["asr_excess"] = [a - self.calibration[-1]["floor_asr"] for a in r["asr"]]
            self.extra[name]["revived"].append(r)
            self.tick(f"revival {name}", self.seed_number)


def run_transfer(bundle: Bundle, victim: Target, data: RunData, sampling: SamplingSpec,
                 settings: TransferSettings = TransferSettings(), device="cpu") -> dict:
    """Every method's ACC / ASR / RA / DER lists on the victim, its clean resources and its ASR after the revival
    attack, with a summary of each.

    Each seed of settings.seeds samples (sampling's n, sampler and steps, that seed), draws its clean budget
    (data.budget: per seed, or the donor's one draw) and trains the defences afresh; the lists hold every seed's
    values in seed order, `per_seed` each seed's means, `spread` the mean and standard deviation of those means,
    `model_std` the mean over seeds of the std over models within a seed. Methods that do not depend on the seed
    (sources.Source.seeded) are measured once, with the first seed."""
    methods, seeds = check_methods(settings.methods), list(settings.seeds)
    sampling = resolve(sampling, bundle.conditions)  # recorded as every seed samples it
    if "donor" in methods and not bundle.budget_donor:
        if settings.methods and settings.methods != ("all",):  # named by the user, not by a default set
            raise ValueError("the donor row is a budget donor's clean model: give a donor's bundle (collect --train-on "
                             "budget), or leave `donor` out")
        methods = tuple(m for m in methods if m != "donor")
    trained = trained_methods(methods)
    if trained and data.train is None:
        raise ValueError(f"the {', '.join(trained)} methods train on clean data; give the training split")
    if victim.trigger is None:
        raise ValueError(f"transfer measures backdoor removal, but target {victim.name!r} has no trigger "
                         f"({victim.trigger_source or 'the clean model'})")
    run = _Run(bundle, TargetEngine(bundle.task, bundle.layout, victim, data.test, device=device), settings, methods,
               device, data.validation if trained else None,
               Progress(progress_units(methods, seeds, settings.revived if trained else 0)))
    # the defences draw from their own generator per seed (budget first): the same whatever n is. Budgets are
    # drawn before anything runs: a bad one fails at once
    gens = {seed: torch.Generator().manual_seed(seed) for seed in seeds}
    budgets = {seed: data.budget(gens[seed]) if trained else None for seed in seeds}
    for seed in seeds:
        run.seed(replace(sampling, seed=seed), budgets[seed], gens[seed], seed == seeds[0])
    images = len(next(iter(budgets.values())).labels) if trained else 0
    return _report(run, data, sampling, seeds, images)


def _report(run: _Run, data: RunData, sampling: SamplingSpec, seeds: list[int], images: int) -> dict:
    bundle, engine = run.bundle, run.engine
    victim = engine.target
    return {"format": FORMAT, "format_version": FORMAT_VERSION,
            "settings": settings_dict(sampling, data.spec, run.settings), "task": bundle.task.name,
            "victim": {"name": victim.name, **engine.as_is(), "trigger": victim.trigger.to_dict(),
                       "trigger_source": victim.trigger_source},
            "seeds": seeds, "layers": bundle.names,
            "clean_budget": {"fraction": data.spec.budget, "images": images,
                             "drawn": (f"once, with seed {data.spec.budget_seed}: the images the donor was trained on"
                                       if data.spec.budget_seed is not None else "at random, per seed")
                                      + " (from the training split less the validation images)"},
            "donor": bundle.budget_donor,
            "revival": {**REVIVAL, "models": run.settings.revived,
                        **({"steps": run.calibration[0]["steps"], "calibration": run.calibration}
                           if run.calibration else {})},
            "defence_settings": hyper_parameters(bundle_defence(bundle, run.settings.defence)),
            "sources": {name: _entry(run, name, images) for name in run.methods},
            "nonfinite": run.extra["generated"].get("nonfinite", 0), "device": str(run.device),
            **({"stitch": run.stitch[0], "stitch_per_seed": run.stitch} if run.stitch else {}),
            "timings_s": {"sample": sum(run.extra["generated"]["seconds"]),
                          "per_method": {m: sum(run.extra[m]["seconds"]) for m in run.methods}}}


def _entry(run: _Run, name: str, images: int) -> dict:
    """One method's block of the report's `sources` (sources.entry): its seeds pooled, the clean data it used."""
    used = ledger(run.bundle, name, images)
    return entry(name, {**_pooled(run.runs[name], run.extra[name]), "clean_data": clean_data(name, images),
                        "clean_images": used["images"]}, used)


def _pooled(per_seed: list[dict], extra: dict) -> dict:
    """One method's seeds pooled: every value, a summary of each metric, each seed's means and their spread,
    the std over models within each seed; its wall time per seed, run-means and what it did, where it has them."""
    if not per_seed:  # a defence that failed at every seed: its reasons only
        return {metric: [] for metric in METRICS} | {"seconds": extra["seconds"], "failed": extra["failed"]}
    m = {metric: [v for run in per_seed for v in run[metric]] for metric in METRICS}  # summarised by sources.entry
    m["per_seed"] = {metric: [summary(run[metric])["mean"] for run in per_seed] for metric in METRICS}
    m["spread"] = {metric: _mean_std(vals) for metric, vals in m["per_seed"].items()}
    m["per_seed_model_std"] = {metric: [summary(run[metric])["std"] if len(run[metric]) > 1 else None
                                        for run in per_seed] for metric in METRICS}
    m["model_std"] = {metric: _mean_std(v)["mean"] for metric, v in m["per_seed_model_std"].items()}
    m["seconds"] = extra["seconds"]
    if extra["revived"]:  # the revival attack on the first few models of each seed
        keys = [k for k in ("acc", "asr", "ra", "asr_excess") if k in extra["revived"][0]]
        m["revived"] = {metric: [v for run in extra["revived"] for v in run[metric]] for metric in keys}
        m["revived"]["per_seed"] = {metric: [summary(run[metric])["mean"] for run in extra["revived"]]
                                    for metric in keys}
        m["revived"]["spread"] = {metric: _mean_std(v) for metric, v in m["revived"]["per_seed"].items()}
    if extra["run_mean"]:
        m["run_mean"] = {metric: _mean_std([r[metric] for r in extra["run_mean"]])["mean"] for metric in METRICS}
    if extra["details"]:
        m["details"] = extra["details"]
    if extra["failed"]:
        m["failed"] = extra["failed"]
    return m


def _mean_std(values: list[float | None]) -> dict[str, float | None]:
    vals = torch.tensor([v for v in values if v is not None], dtype=torch.float64)
    if len(vals) == 0:
        return {"mean": None, "std": None}
    return {"mean": vals.mean().item(), "std": vals.std().item() if len(vals) > 1 else 0.0}


def _round(value, digits):
    return None if value is None else round(value, digits)


def _ledger_cells(m: dict) -> list:
    """A method's clean images, model images and checkpoints (from its ledger; older reports: its clean images)."""
    r = m.get("clean_resources") or {"images": m.get("clean_images", 0), "model_images": None, "checkpoints": None}
    return [r["images"], r["model_images"], r["checkpoints"]]


def table_rows(target: dict, sources: dict[str, dict]) -> list[list]:
    """The transfer table (TABLE_HEADERS): the target as-is, then every source's clean resources, means, best DER,
    DER std over models (within a seed), ASR after the revival attack and wall time per run."""
    rows = [[f"target as-is ({target['name']})", None, None, None, 1, round(target["acc"], 2), round(target["asr"], 2),
             round(target["ra"], 2), 0.5, 0.5, None, None, None]]
    for name, m in sources.items():
        if not m.get("acc"):
            rows.append([name, *_ledger_cells(m), 0, *[None] * (len(TABLE_HEADERS) - 5)])
            continue
        acc, asr, ra, d = (sum(m[k]) / len(m[k]) for k in METRICS)
        std = m["model_std"]["der"] if "model_std" in m else (summary(m["der"])["std"] if len(m["der"]) > 1 else None)
        revived_asr = (m.get("revived") or {}).get("asr")
        seconds = m.get("seconds") or []
        rows.append([name, *_ledger_cells(m), len(m["acc"]), round(acc, 2), round(asr, 2), round(ra, 2), round(d, 3),
                     round(max(m["der"]), 3), _round(std, 3),
                     _round(sum(revived_asr) / len(revived_asr), 2) if revived_asr else None,
                     _round(sum(seconds) / len(seconds), 1) if seconds else None])
    return rows


def table(report: dict) -> str:
    """The transfer table as text; with several seeds each mean is the mean ± std of the seeds' means."""
    v, b = report["victim"], report.get("clean_budget", {})
    several = len(report.get("seeds", [])) > 1
    lines = [f"victim {v['name']}: ACC {v['acc']:.2f}  ASR {v['asr']:.2f}  RA {v['ra']:.2f}"
             + (f"  (seeds {', '.join(map(str, report['seeds']))}: mean ± std over seeds)" if several else ""),
             trigger_line(v),
             f"clean budget: {b.get('fraction')} of the training split = {b.get('images')} images, drawn "
             f"{b.get('drawn', 'per seed')}; each defence at its final checkpoint",
             f"{'method':<20} {'images':>6} {'model':>6} {'ckpts':>5} {'n':>5} {'ACC':>13} {'ASR':>13} {'RA':>13} "
             f"{'DER':>13} {'DER std':>7} {'revived':>7} {'time s':>7}"]
    for row, (name, m) in zip(table_rows(v, report["sources"])[1:], report["sources"].items()):
        ledger = " ".join(f"{'-' if c is None else c:>{w}}" for c, w in zip(row[1:4], (6, 6, 5)))
        if not row[4]:
            lines.append(f"{name:<20} {ledger} {0:>5}  (no finite parameter sets)")
            continue
        cells = [f"{m['spread'][k]['mean']:{f}} ± {m['spread'][k]['std']:{f}}" if several else f"{cell:{f}}"
                 for k, f, cell in zip(METRICS, (".2f", ".2f", ".2f", ".3f"), row[5:9])]
        tail = [f"{c:>{w}{f}}" if c is not None else f"{'-':>{w}}" for c, w, f in zip(row[10:], (7, 7, 7),
                                                                                      (".3f", ".2f", ".1f"))]
        lines.append(f"{name:<20} {ledger} {row[4]:>5} " + " ".join(f"{c:>13}" for c in cells) + " " + " ".join(tail))
    if "stitch" in report:
        st = report["stitch"]
        lines.append(f"stitch: fitted on {st['images']} clean images at stage {st['stage']}, R^2 {st['r2']:.3f}, "
                     f"shrink {st.get('shrink', 0.0):g}, {st['tune_epochs']} cross-entropy epochs")
    r = report.get("revival")
    if r:
        lines.append(f"revived: ASR after {r['steps']} SGD steps (lr {r['lr']}) on batches of {r['batch']} budget images, "
                     f"{r['poisoned']} of them triggered, on the first {r['models']} models of each method")
    return "\n".join(lines)
