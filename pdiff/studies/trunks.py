"""Layers for a trunk the generator never saw, asked for by the trunk's own signature, beside every control that
could explain them without the condition.

For each trunk the bundle held out (`train --hold-out-trunk ... --condition trunk`), on that trunk as it is:
- `trunk_as_is` (its own layers: the bar), `own_checkpoints` (its own collected checkpoints: what a generator that
  copied its training set perfectly would need to have seen);
- `generated` (trunk=target: the signature computed from the trunk itself on the probe images), `unconditional`
  (the same network, no condition), `swap` (another trunk's signature: must fail), `random` (a random signature);
- `retrieval` (the checkpoints of the training trunk whose signature is nearest) and `retrieval_gaussian` (a
  per-number Gaussian fitted on them), `average` (the mean of every training checkpoint);
- the data-fit baselines on the same probe images as the signature: `nearest_mean` (the nearest class mean of the
  trunk's own features) and `probe` (a linear head on them), and the stitch route (`stitch+clean-layers`: a stitch
  fitted on the probe images onto the first training trunk, then that trunk's own layers).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from pdiff.collection.folder import Collection
from pdiff.core.params import own_vector
from pdiff.core.settings import SamplingSpec, settings_dict
from pdiff.data.datasets import DATASETS
from pdiff.data.plan import RunData
from pdiff.generator.bundle import Bundle
from pdiff.generator.conditions import resolve, signature
from pdiff.generator.diffusion import Guide
from pdiff.generator.sampling import draw, sample
from pdiff.measure.baselines import average, gaussian
from pdiff.measure.engine import TargetEngine, measure
from pdiff.measure.probe import fit_nearest_mean, fit_probe
from pdiff.measure.revival import Composed
from pdiff.measure.similarity import summary
from pdiff.measure.stitch import stitched_engine
from pdiff.measure.targets import Target
from pdiff.models.staged import accuracy, predict
from pdiff.studies import formats

FORMAT, FORMAT_VERSION = formats.TRUNKS, formats.VERSION


def trunk_study(bundle: Bundle, collection: str | Path | Collection, data: RunData, sampling: SamplingSpec,
                device="cpu") -> dict:
    """Every source's accuracy on every held-out trunk (data.test), and each one's summary over the trunks."""
    c = bundle.conditions
    if c is None or c.kind != "trunk":
        raise ValueError("this study needs a trunk-conditional bundle: train one with --condition trunk")
    held = bundle.info.held_out_trunks
    if not held:
        raise ValueError("this bundle was trained on every trunk; train one with --hold-out-trunk I J ...")
    coll = collection if isinstance(collection, Collection) else Collection.load(collection)
    trained = sorted(set(bundle.info.trunk_of))
    signatures = c.standardised(torch.stack([c.values[bundle.info.trunk_of.index(t)] for t in trained]))
    asked = resolve(replace(sampling, condition="trunk=target"), c)  # the guidance every trunk's sets are drawn with
    per_trunk = {str(h): _one_trunk(bundle, coll, h, trained, signatures, data, asked, device) for h in held}
    sources = list(next(iter(per_trunk.values()))["sources"])
    overall = {s: summary([r["sources"][s]["mean"] for r in per_trunk.values()]) for s in sources}
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "settings": settings_dict(sampling, data.spec),
            "task": bundle.task.name, "held_out_trunks": held, "trained_on_trunks": trained,
            "probe_images": len(c.probe.labels), "guidance": asked.guidance, "trunks": per_trunk,
            "summary_over_trunks": overall}


def _one_trunk(bundle: Bundle, coll: Collection, h: int, trained: list[int], signatures: torch.Tensor,
               data: RunData, asked: SamplingSpec, device) -> dict:
    """Every source on held-out trunk `h`, the generated ones drawn as `asked` (trunk=target, resolved)."""
    state, c, sampling = coll.trunks[h], bundle.conditions, asked
    engine = TargetEngine(bundle.task, bundle.layout, Target(f"trunk {h}", state, None), data.test, device=device)
    own = c.standardised(draw_signature(bundle, state, device))
    nearest = trained[int(torch.cdist(own, signatures).argmin())]
    other = trained[int(torch.cdist(own, signatures).argmax())]  # the farthest training trunk: the swap
    retrieved = coll.rows_of_trunk(nearest)
    g = torch.Generator().manual_seed(sampling.seed)

    def finite(v):
        return v[torch.isfinite(v).all(1)]

    sets = {
        "trunk_as_is": own_vector(state, bundle.layout), "own_checkpoints": coll.rows_of_trunk(h),
        "generated": finite(draw(bundle, asked, device, target_state=state).vectors),
        "unconditional": finite(draw(bundle, replace(sampling, condition="none"), device).vectors),
        "swap": finite(draw(bundle, asked, device, target_state=coll.trunks[other]).vectors),
        "random": finite(sample(bundle, sampling.n, sampling.sampler, sampling.steps, sampling.generator(), device,
                                guide=Guide(torch.randn(sampling.n, c.dim, generator=g), asked.guidance))),
        "retrieval": retrieved, "retrieval_gaussian": gaussian(retrieved, bundle.layout, sampling.n, g),
        "average": average(bundle.originals),
    }
    m = measure(engine, sets, reference=None)["metrics"]
    results = {name: metrics["acc"] for name, metrics in m.items()}
    results.update(_data_fit(bundle, engine, c.probe, device))
    results["stitch+clean-layers"] = _stitch_route(bundle, engine, coll, trained[0], c.probe)
    return {"trunk_acc": coll.trunk_accs[h], "nearest_trunk": nearest, "swap_trunk": other,
            "sources": {name: {"acc": accs, **summary(accs)} for name, accs in results.items()}}


def draw_signature(bundle: Bundle, state: dict, device) -> torch.Tensor:
    """The raw signature (1, dim) of a model, as the bundle computes it (its probe set)."""
    return signature(bundle.task, state, bundle.names, bundle.conditions.probe, device)[None]


def _data_fit(bundle: Bundle, engine: TargetEngine, probe, device) -> dict[str, list[float]]:
    """The nearest class mean and a linear probe on the trunk's own features of the probe images."""
    trunk, start = engine.clean.model, engine.clean.start
    feats = predict(trunk, probe.normalized(device), 0, start)
    classes = DATASETS[bundle.task.dataset].classes
    out = {}
    for name, head in (("nearest_mean", fit_nearest_mean(feats, probe.labels, classes)),
                       ("probe", fit_probe(feats, probe.labels, classes))):
        model = Composed(trunk, start, None, head)
        out[name] = [accuracy(predict(model, engine.test.normalized(device)).cpu(), engine.test.labels)]
    return out


def _stitch_route(bundle: Bundle, engine: TargetEngine, coll: Collection, onto: int, probe) -> list[float]:
    """A stitch fitted on the probe images from the trunk onto training trunk `onto`, then that trunk's layers."""
    stitched, _ = stitched_engine(engine, coll.trunks[onto], probe)
    return measure(stitched, {"s": own_vector(coll.trunks[onto], bundle.layout)}, reference=None)["metrics"]["s"]["acc"]


def trunk_lines(report: dict) -> str:
    """One line per source: its mean accuracy on each held-out trunk, and over them."""
    held = report["held_out_trunks"]
    lines = [f"held-out trunks {held}; signatures from {report['probe_images']} probe images; guidance "
             f"{report['guidance']}",
             f"{'source':<20} " + " ".join(f"{'trunk ' + str(h):>9}" for h in held) + f" {'mean':>7}"]
    for name, s in report["summary_over_trunks"].items():
        cells = " ".join(f"{report['trunks'][str(h)]['sources'][name]['mean']:>9.2f}" for h in held)
        lines.append(f"{name:<20} {cells} {s['mean']:>7.2f}")
    return "\n".join(lines)
