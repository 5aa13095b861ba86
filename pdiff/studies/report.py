"""The evaluate report: generated sets beside the originals and baselines on one target, as one dict.

Shared by `python -m pdiff evaluate`, the API's `pdiff.evaluate` and the app's Run button; a composition of
`measure.engine.measure`. Accuracies are in percent. The report carries `format` and `format_version`, and the
settings it was run with.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import torch

from pdiff.core.params import tensor_std
from pdiff.core.settings import DefenceSettings, EvalSettings, SamplingSpec, settings_dict
from pdiff.core.splice import select_layers
from pdiff.data.plan import RunData
from pdiff.data.triggers import trigger_line
from pdiff.generator.bundle import Bundle
from pdiff.generator.conditions import resolve
from pdiff.generator.sampling import Samples, draw
from pdiff.measure.baselines import (GAUSSIAN_TEMPERATURES, TOP_FRACTIONS, TOP_TEMPERATURES, average, baseline_sets,
                                     gaussian, gaussian_sweep, match_level, noisy_originals, top_gaussians)
from pdiff.measure.assembly import Failed, assemble, ledger
from pdiff.measure.defences import DEFENCES, LAYER_DEFENCES
from pdiff.measure.engine import EngineCache, TargetEngine, measure
from pdiff.measure.similarity import iou_matrix
from pdiff.measure.sources import entry, ordered, source
from pdiff.measure.targets import Target
from pdiff.studies import formats

Progress = Callable[[float, str], None]
NOT_APPLICABLE = "not applicable: the clean target has no backdoor"
# the matched noise level and Gaussian temperature are searched with this many sets and bisection steps (a level
# to 1/256 of its bracket), then drawn at the report's count: the searches are most of a validation split's cost
MATCH_SETS, MATCH_ITERATIONS = 32, 8


FORMAT, FORMAT_VERSION = formats.EVALUATE, formats.VERSION


def run_report(bundle: Bundle, target: Target, data: RunData, sampling: SamplingSpec | Samples,
               settings: EvalSettings = EvalSettings(), engines: EngineCache | None = None,
               progress: Progress | None = None, device="cpu") -> tuple[dict, torch.Tensor]:
    """Sample parameter sets as `sampling` says (or take the Samples drawn before), splice them into `target`,
    evaluate everything on `data.test`; returns (report, vectors): the last of `report_stages`."""
    for report, vectors in report_stages(bundle, target, data, sampling, settings, engines, progress, device):
        pass
    return report, vectors


def report_stages(bundle: Bundle, target: Target, data: RunData, sampling: SamplingSpec | Samples,
                  settings: EvalSettings = EvalSettings(), engines: EngineCache | None = None,
                  progress: Progress | None = None, device="cpu") -> Iterator[tuple[dict, torch.Tensor]]:
    """run_report's work as it comes, for a page that shows results early: yields (report, vectors) three times,
    each report whole in shape, `pending` naming what is still to come (absent from the last, the finished report):
    1. the generated sets and the originals measured (everything else empty);
    2. every baseline, control and defence, and the validation choices;
    3. the t-SNE.

    Beside the generated sets: the originals and the memorisation baselines (`baselines.baseline_sets`,
    min(n, K) sets each); with settings.curves, the Gaussian baseline at every temperature; for an accuracy-
    conditional bundle asked with a guidance scale above 0, Gaussians of the top-q originals. With a validation
    split (data.validation), the noise baseline matched to the generated mean accuracy, the Gaussian matched to
    their novelty (mean max-IoU to the originals) and the "best" models chosen on it. A backdoored target gets
    the clean-layers control and, with settings.defences, the defences on a clean budget (`_controls_and_defences`).
    With data.bn, BatchNorm statistics after a generated layer are re-estimated per model.

    The controls are drawn from settings.controls_seed (None: the run's seed). With `engines`, seed-free work is
    kept between calls: the engines, the results of every set that does not depend on the generated ones (by
    content), and (a stored EngineCache) the same on disk; the t-SNE places the sets that depend on the run into a
    fixed map of the others (`similarity.TsneMap`), kept likewise."""
    say = progress or (lambda frac, desc: None)
    spec = sampling.spec if isinstance(sampling, Samples) else sampling
    layers = select_layers(bundle.layout, list(settings.layers))
    engines = engines if engines is not None else EngineCache(0)
    engine = engines.get(bundle, target, layers, data.test, device, data.bn)
    bn_s = engine.bn.seconds if engine.bn else 0.0
    space = lambda v: bundle.normaliser.comparison_space(v, bundle.layout)  # noqa: E731

    samples, sample_s = _sample(bundle, sampling, target, device, say)
    vectors, finite, spec = samples.vectors, samples.finite, samples.spec  # spec: the condition resolved

    # 1. the generated sets and the originals: what a reader looks at first
    say(0.6, "evaluating the generated sets")
    t0 = time.perf_counter()
    seed = spec.seed if settings.controls_seed is None else settings.controls_seed  # the controls' draws
    count = min(len(vectors), len(bundle.originals))
    first = {"generated": vectors[finite], "originals": bundle.originals}
    known = {name: engine.run(v, fixed=name == "originals") for name, v in first.items()}
    m = measure(engine, first, space=space, known=known)
    report = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "settings": settings_dict(spec, data.spec, settings),
        "task": bundle.task.name, "bundle": str(bundle.path) if bundle.path else None,
        "target": _target_info(engine, target),
        "backdoor": "applicable" if engine.backdoor else _not_applicable(target),
        "chain_steps": spec.chain_steps(bundle.ddpm_cfg.timesteps), "layers": layers,
        **_sources_section(bundle, m, finite, {}), "unavailable": {},
        "tsne": {"x": [], "y": [], "source": [], "acc": []},
        "timings_s": {"sample": sample_s, "evaluate": time.perf_counter() - t0},
        "bn_statistics": (f"re-estimated per model on {len(data.bn.labels)} training images" if engine.bn
                          else "as spliced (or the target's own)"),
        "device": str(device), "test_size": len(data.test.labels), "validation": None,
        "condition": _condition(bundle, spec, m["metrics"]),
    }
    yield {**report, "pending": ["baselines", "t-SNE"]}, vectors

    # 2. the sources that could explain the generated sets: baselines, controls, defences
    t0 = time.perf_counter()
    controls_sets, unavailable = _fixed_sources(bundle, count, seed, settings, _guided(bundle, spec))
    sets, fixed = {"generated": first["generated"], **controls_sets}, list(controls_sets)
    checked = {}
    if data.validation is not None and len(sets["generated"]):
        say(0.62, "validation: matched noise and Gaussian, selection")
        val = engines.get(bundle, target, layers, data.validation, device, data.bn)
        checked = _on_validation(bundle, val, sets, count, seed)
    controls, defended = _controls_and_defences(bundle, engine, sets, data, settings, spec.seed, device, say)
    say(0.8, "evaluating the baselines")
    m = measure(engine, sets, space=space, known=known, fixed=(*fixed, "clean-layers"))
    engines.save()
    # the engine measured the layer defences; the whole models were measured on their own
    report.update(**_sources_section(bundle, m, finite, {**controls, **defended}), unavailable=unavailable,
                  **_selection(checked, m["metrics"]))
    report["timings_s"]["evaluate"] += time.perf_counter() - t0
    if engine.bn:
        report["timings_s"]["bn_reestimate"] = engine.bn.seconds - bn_s
    yield {**report, "pending": ["t-SNE"] if settings.tsne else []}, vectors

    # 3. where every source's vectors lie
    if settings.tsne:
        say(0.9, "t-SNE")
        t0 = time.perf_counter()
        report["tsne"] = _tsne(bundle, sets, fixed, m["metrics"], seed, engines)
        report["timings_s"]["tsne"] = time.perf_counter() - t0
    say(1.0, "done")
    yield report, vectors


def warm(bundle: Bundle, target: Target, data: RunData, sampling: SamplingSpec, settings: EvalSettings,
         engines: EngineCache, device="cpu") -> TargetEngine:
    """The seed-free work of a report of `sampling` on `target` done into `engines` ahead of a request, so that
    report_stages finds it there: the engines on the test and validation splits (trunk features, triggered images),
    the originals' and the controls' results (from disk where stored) and their t-SNE map. Returns the test split's
    engine."""
    layers = select_layers(bundle.layout, list(settings.layers))
    engine = engines.get(bundle, target, layers, data.test, device, data.bn)  # first: a run's first stage needs it
    val = engines.get(bundle, target, layers, data.validation, device, data.bn) if data.validation is not None else None
    seed = sampling.seed if settings.controls_seed is None else settings.controls_seed
    sets, _ = _fixed_sources(bundle, min(sampling.n, len(bundle.originals)), seed, settings,
                             _guided(bundle, resolve(sampling, bundle.conditions)))
    for vectors in sets.values():
        engine.run(vectors, fixed=True)
    if val is not None:
        val.run(bundle.originals, fixed=True)
    engines.save()
    if settings.tsne:
        space = [bundle.normaliser.comparison_space(v, bundle.layout) for v in sets.values()]
        engines.tsne_map(bundle, torch.cat(space), seed)
    return engine


def _sample(bundle: Bundle, sampling: SamplingSpec | Samples, target: Target, device,
            say: Progress) -> tuple[Samples, float]:
    """The generated sets (the Samples given, or drawn now as the spec says, trunk=target meaning `target`'s trunk)
    and the seconds sampling took."""
    if isinstance(sampling, Samples):
        return sampling, 0.0
    say(0.0, "sampling")
    t0 = time.perf_counter()
    samples = draw(bundle, sampling, device, lambda i, total: say(0.6 * i / total, "sampling"), target.state)
    return samples, time.perf_counter() - t0


def _controls_and_defences(bundle: Bundle, engine: TargetEngine, sets: dict, data: RunData, settings: EvalSettings,
                           seed: int, device, say: Progress) -> tuple[dict[str, dict], dict[str, dict]]:
    """For a backdoored target (measure.assembly): the clean-layers control (the clean model's own values of the
    layers) into `sets`; the clean model as it is (and a budget donor's bundle's donor) as whole-model controls; with
    `data` (and its training split) and settings.defences, every defence on a clean budget drawn from it less the
    validation images, each at its final checkpoint: the layer defences' into `sets`. Returns (controls, defences):
    the whole models' metrics, and for every defence its clean images and seconds."""
    if not engine.backdoor:
        return {}, {}
    wanted = ["clean-layers", "clean-model", "donor"]
    budget, g = None, None
    if settings.defences is not None and data.train is not None:
        say(0.65, "defences (fine-tune, re-init, FT, FP, FST, ANP, CLP)")
        g = torch.Generator().manual_seed(seed)
        budget = data.budget(g)
        wanted += DEFENCES
    made = assemble(bundle, wanted, engine.target.state, budget, g, settings.defences or DefenceSettings(), device)
    sets.update({name: v[-1:] if name in LAYER_DEFENCES else v for name, v in made.layers.items()})
    controls = {name: engine.measure_state(made.whole[name], name) for name in ("clean-model", "donor")
                if name in made.whole}
    out = {}
    for name, d in made.defences.items():
        if isinstance(d, Failed):  # marked in the report, its reason in one line
            out[name] = {"seconds": [], "failed": [d.reason], "clean_images": len(budget.labels)}
            continue
        out[name] = {"seconds": [d.seconds], "clean_images": len(budget.labels) if source(name).budget else 0}
        if d.vectors is None:  # a whole model: measured here (the engine measures the layer defences' sets)
            out[name].update(engine.measure_state(d.state, name), details=d.details)
    return controls, out


def _fixed_sources(bundle: Bundle, count: int, seed: int, settings: EvalSettings,
                   guided: bool) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The sets that depend on the controls' `seed` alone: the originals and (settings.baselines) the memorisation
    baselines, `count` sets each; the sets, and why any is missing. `guided`: the run used an accuracy condition (a
    scale above 0), so the Gaussians of the top-q originals join."""
    sets, unavailable, g = {"originals": bundle.originals}, {}, torch.Generator().manual_seed(seed + 1)
    if settings.baselines:
        baselines, unavailable = baseline_sets(bundle.originals, tensor_std(bundle.originals, bundle.layout),
                                               bundle.layout, count, g)
        sets.update(baselines, **(gaussian_sweep(bundle.originals, bundle.layout, count, g) if settings.curves else {}))
        if guided:  # the fair control for asking for accuracy: Gaussians of the best
            sets.update(top_gaussians(bundle.originals, bundle.layout, bundle.conditions.values, count, g,
                                      GAUSSIAN_TEMPERATURES if settings.curves else TOP_TEMPERATURES))
    return sets, unavailable


def _guided(bundle: Bundle, spec: SamplingSpec) -> bool:
    """Whether the run (its spec resolved: conditions.resolve) asked an accuracy-conditional bundle for an accuracy
    with a guidance scale above 0 (at 0, or asked for none, the sets come from its unconditional model and the
    condition is not used)."""
    c = bundle.conditions
    return c is not None and c.kind == "acc" and spec.condition.kind == "acc" and spec.guidance > 0


def _sources_section(bundle: Bundle, m: dict, finite: torch.Tensor, measured: dict[str, dict]) -> dict:
    """The report's `sources` block (one entry per source, in the registry's order: sources.entry), similarity and
    novelty. `measured`: what the engine's sets do not hold (the whole models' metrics, every defence's clean images
    and seconds); a source's ledger counts the clean budget the defences drew."""
    budget_images = max((d.get("clean_images", 0) for d in measured.values()), default=0)
    blocks = {name: {**m["metrics"].get(name, {}), **measured.get(name, {})}
              for name in ordered({*m["metrics"], *measured})}
    # finite_index: row of the saved parameter file behind each entry of the generated lists
    blocks["generated"].update(nonfinite=int((~finite).sum()), finite_index=finite.nonzero().flatten().tolist())
    return {"sources": {name: entry(name, block, ledger(bundle, name, budget_images)) for name, block in blocks.items()},
            "similarity": _similarity_section(m["similarity"]), "novelty": _novelty(m)}


def _on_validation(bundle: Bundle, val: TargetEngine, sets: dict, count: int, seed: int) -> dict:
    """On the validation split: each generated and original model's accuracy (for selection); the noise sigma whose
    mean accuracy matches the generated mean and the Gaussian temperature whose mean max-IoU to the originals
    matches the generated sets'; adds those two baselines to `sets`. The searches draw at the controls' `seed`:
    with a fixed one, their sets are the same on every call and measured once."""
    runs = {name: val.run(sets[name], fixed=name == "originals") for name in ("generated", "originals")}
    val_acc = {name: r["acc"] for name, r in runs.items()}
    target_acc = sum(val_acc["generated"]) / len(val_acc["generated"])
    std, searched = tensor_std(bundle.originals, bundle.layout), min(count, MATCH_SETS)
    picks = torch.randint(0, len(bundle.originals), (searched,), generator=torch.Generator().manual_seed(seed))

    def accuracy_at(sigma: float) -> float:  # the same noise draws at every sigma: a smooth curve to bisect
        if sigma == 0:  # noisy_originals' first draw picks these originals; their accuracies are known
            accs = [val_acc["originals"][i] for i in picks.tolist()]
        else:
            noisy = noisy_originals(bundle.originals, std, bundle.layout, sigma, searched,
                                    torch.Generator().manual_seed(seed))
            accs = val.run(noisy, fixed=True)["acc"]
        return sum(accs) / len(accs)

    def novelty(wrong: torch.Tensor) -> float:  # the mean max-IoU to the originals on validation
        return iou_matrix(wrong, runs["originals"]["wrong"]).max(1).values.mean().item()

    def novelty_at(temperature: float) -> float:  # at 0 every draw is the average: one model
        drawn = (average(bundle.originals) if temperature == 0 else
                 gaussian(bundle.originals, bundle.layout, searched, torch.Generator().manual_seed(seed + 3), temperature))
        return novelty(val.run(drawn, fixed=True)["wrong"])

    sigma = match_level(accuracy_at, target_acc, iterations=MATCH_ITERATIONS)
    if sigma is not None:
        sets["noise_matched"] = noisy_originals(bundle.originals, std, bundle.layout, sigma, count,
                                                torch.Generator().manual_seed(seed + 2))
    target_iou = novelty(runs["generated"]["wrong"])
    temperature = match_level(novelty_at, target_iou, iterations=MATCH_ITERATIONS)
    if temperature is not None:
        sets["gaussian_matched"] = gaussian(bundle.originals, bundle.layout, count,
                                            torch.Generator().manual_seed(seed + 4), temperature)
    return {"val_acc": val_acc, "sigma": sigma, "target_acc": target_acc, "size": len(val.labels),
            "temperature": temperature, "target_iou": target_iou}


def _condition(bundle: Bundle, spec: SamplingSpec, metrics: dict) -> dict | None:
    """What a conditional bundle was asked and with which scale; for `acc`, the originals' mean test accuracy over
    their top q by validation accuracy (the bar an `acc=best` ask must clear)."""
    c = bundle.conditions
    if c is None:
        return None
    out = {"kind": c.kind, "asked": str(spec.condition), "guidance": spec.guidance}  # as sampling used them
    if c.kind == "acc":
        order = c.values.flatten().argsort(descending=True).tolist()
        test = metrics["originals"]["acc"]
        out["originals_top_by_validation"] = {
            f"top{round(q * 100)}": sum(test[i] for i in order[:max(1, round(q * len(order)))])
            / max(1, round(q * len(order))) for q in TOP_FRACTIONS}
        out["validation_range"] = list(c.acc_range)
    return out


def _selection(checked: dict, metrics: dict) -> dict:
    """The report's `validation` block: matched noise sigma, and each source's model chosen on validation
    accuracy with its test accuracy (the max over test accuracies is only an upper bound)."""
    if not checked:
        return {"validation": None}
    chosen = {}
    for name, accs in checked["val_acc"].items():
        i = max(range(len(accs)), key=accs.__getitem__)
        chosen[name] = {"index": i, "validation_acc": accs[i], "test_acc": metrics[name]["acc"][i]}
    return {"validation": {"size": checked["size"], "matched_noise_sigma": checked["sigma"],
                           "generated_mean_validation_acc": checked["target_acc"],
                           "matched_gaussian_temperature": checked["temperature"],
                           "generated_mean_validation_max_iou": checked["target_iou"], "selected": chosen}}


def _novelty(m: dict) -> dict:
    """Spread and novelty per source: accuracy mean and std, mean IoU within the source, mean max-IoU to the
    originals, coverage, and the mean distance to the nearest original (normalised parameter space)."""
    sim, out = m["similarity"], {}
    for name, s in m["summary"].items():
        own = sim.get(name, {})
        out[name] = {"acc_mean": s["acc"]["mean"], "acc_std": s["acc"]["std"], "self_iou": own.get("self_iou"),
                     "max_iou_mean": own.get("max_iou_mean"), "coverage": own.get("coverage"),
                     "nearest_distance_mean": own.get("nearest_distance_mean")}
    out["originals"]["nearest_other_iou_mean"] = sim["originals"]["nearest_other_iou_mean"]
    return out


def _not_applicable(target: Target) -> str:
    """Why a report has no backdoor metrics: the clean target, or a user who chose no trigger."""
    if target.trigger_source is None:
        return NOT_APPLICABLE
    return f"not applicable: no trigger ({target.trigger_source})"


def _target_info(engine: TargetEngine, target: Target) -> dict:
    """The target's name and own metrics; its trigger and where that trigger came from (never silent)."""
    as_is = engine.as_is()
    # the name and the trigger's source are the request's: a cached engine may have been made for a target of
    # the same weights and trigger under another name (measure.engine.EngineCache)
    info = {"name": target.name, "acc": as_is["acc"], "trigger_source": target.trigger_source}
    if engine.backdoor:
        info.update(asr=as_is["asr"], ra=as_is["ra"], trigger=engine.trigger.to_dict())
    return info


def _similarity_section(sim: dict) -> dict:
    """The report's similarity block: generated against originals in full, each baseline's means."""
    gen = sim["generated"]
    return {"max_iou_to_originals": gen["max_iou"],
            "mean_iou": {"oo": sim["originals"]["self_iou"], "gg": gen["self_iou"], "og": gen["cross_iou"]},
            "baselines": {name: {"max_iou_to_originals_mean": s["max_iou_mean"], "mean_iou_bb": s["self_iou"],
                                 "mean_iou_ob": s["cross_iou"]}
                          for name, s in sim.items() if name not in ("generated", "originals")},
            # every model of every source: max IoU to the originals, distance to the nearest original
            "per_model": {name: {"max_iou": s["max_iou"], "nearest_distance": s.get("nearest_distance", [])}
                          for name, s in sim.items() if name != "originals"},
            "originals_nearest_other_iou": sim["originals"]["nearest_other_iou"]}


def _tsne(bundle: Bundle, sets: dict[str, torch.Tensor], reference: list[str], metrics: dict, seed: int,
          engines: EngineCache) -> dict:
    """Every source's normalised vectors in 2-D: the `reference` sources (the originals and the controls drawn at
    the controls' seed) as one t-SNE map, fitted once per bundle and reference (engines.tsne_map), every other
    source placed into it."""
    space = {k: bundle.normaliser.comparison_space(v, bundle.layout) for k, v in sets.items()}
    tsne = engines.tsne_map(bundle, torch.cat([space[k] for k in reference]), seed)
    placed = [k for k in sets if k not in reference]
    xy = {k: v for k, v in zip(reference, tsne.points.split([len(sets[k]) for k in reference]))}
    if placed:
        xy.update(zip(placed, tsne.place(torch.cat([space[k] for k in placed])).split([len(sets[k]) for k in placed])))
    names = list(sets)
    joint = torch.cat([xy[k] for k in names])
    return {"x": joint[:, 0].tolist(), "y": joint[:, 1].tolist(),
            "source": [k for k in names for _ in range(len(sets[k]))],
            "acc": [a for k in names for a in metrics[k]["acc"]]}


def familiar_lines(report: dict) -> str:
    """The reference tool's printout: sorted accuracies, then average, max, min, median."""
    sources = report["sources"]
    acc = sorted(sources["generated"]["acc"])
    s = sources["generated"]["summary"]["acc"]
    lines = [f"generated accuracies (sorted): {[round(a, 2) for a in acc]}"]
    if acc:
        lines += [f"average: {s['mean']:.2f}", f"max: {s['best']:.2f}", f"min: {s['min']:.2f}",
                  f"median: {s['median']:.2f}"]
    o = sources["originals"]["summary"]["acc"]
    lines.append(f"originals: best {o['best']:.2f} mean {o['mean']:.2f} median {o['median']:.2f} min {o['min']:.2f}")
    t = report["target"]
    lines.append(f"target {t['name']}: acc {t['acc']:.2f}" + (f" asr {t['asr']:.2f} ra {t['ra']:.2f}" if "asr" in t else ""))
    lines += [line for line in [trigger_line(t)] if line]
    return "\n".join(lines + [novelty_lines(report)])


def novelty_lines(report: dict) -> str:
    """One line per source: accuracy, spread and novelty (the figures a reader of the memorisation critique
    looks for first), then the validation choice and what could not be computed."""
    def cell(value, fmt):
        return f"{value:{fmt}}" if value is not None else "-"

    nov = report["novelty"]
    lines = [f"{'source':<16} {'n':>4} {'acc':>6} {'std':>6} {'IoU within':>10} {'max-IoU':>8} {'coverage':>8} "
             f"{'dist':>7}"]
    for name, v in nov.items():
        n = len(report["sources"].get(name, {}).get("acc", []))
        lines.append(f"{name:<16} {n:>4} {cell(v['acc_mean'], '6.2f')} {cell(v['acc_std'], '6.3f')} "
                     f"{cell(v['self_iou'], '10.3f')} {cell(v['max_iou_mean'], '8.3f')} {cell(v['coverage'], '8.3f')} "
                     f"{cell(v['nearest_distance_mean'], '7.2f')}")
    lines.append(f"originals' nearest other original: IoU {cell(nov['originals']['nearest_other_iou_mean'], '.3f')}")
    val = report.get("validation")
    if val:
        sel = val["selected"]["generated"]
        sigma = val["matched_noise_sigma"]
        lines.append((f"noise matched to the generated mean accuracy: sigma {sigma:.4f}" if sigma is not None else
                      "no noise level matches the generated mean accuracy: the originals score below it")
                     + f" (validation, {val['size']} images)")
        lines.append(f"generated model chosen on validation: test acc {sel['test_acc']:.2f} (the max over test "
                     f"accuracies, {report['sources']['generated']['summary']['acc']['best']:.2f}, is only an "
                     "upper bound)")
    lines += [f"{name}: {why}" for name, why in report.get("unavailable", {}).items()]
    return "\n".join(lines)
