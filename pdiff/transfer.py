"""Transfer to a backdoored victim: generated layers beside the defences a generator must beat.

Every method yields parameter sets for the bundle's train_layer, spliced into the same victim
and evaluated by the same engine: generated (sampled from the bundle), originals (the clean
checkpoints as they are), finetune (the victim's own train_layer trained on clean data with
the collection's step budget) and reinit (the same layers re-initialised, then trained so).
"""
from __future__ import annotations

import time

import torch
from torch import nn

from pdiff.bundle import Bundle
from pdiff.collect import Split, collect_checkpoints
from pdiff.evaluate import summary
from pdiff.params import flatten
from pdiff.report import TargetEngine, as_is_metrics, method_metrics, resolve_target
from pdiff.sample import sample
from pdiff.splice import finite_rows
from pdiff.targets import check_architecture

METHODS = ("generated", "originals", "finetune", "reinit")


def _reinit_(model: nn.Module, names: list[str], generator: torch.Generator) -> None:
    """Fresh values for the named parameters only; BatchNorm running statistics stay the victim's."""
    owners = {n.rsplit(".", 1)[0] for n in names}
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        for owner in sorted(owners):
            module = model.get_submodule(owner)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.fill_(1.0)   # reset_parameters() would also reset the running statistics
                module.bias.zero_()
            else:
                module.reset_parameters()


def defence_sets(bundle: Bundle, victim_state: dict[str, torch.Tensor], train: Split, test: Split,
                 generator: torch.Generator, k: int, device="cpu") -> dict[str, torch.Tensor]:
    """K parameter sets per defence, collected along one training run each (trunk and BN frozen)."""
    out = {}
    for name in ("finetune", "reinit"):
        model = check_architecture(bundle.task, victim_state)
        if name == "reinit":
            _reinit_(model, bundle.names, generator)
        coll = collect_checkpoints(model, bundle.task, train, test, generator, k=k, device=device)
        out[name] = flatten(coll.params, bundle.layout).float()
    return out


def run_transfer(bundle: Bundle, victim: str, n: int, seed: int, train: Split, test: Split, sampler: str = "ddim",
                 steps: int | None = 50, k_defence: int | None = None, device="cpu") -> dict:
    """Every method's ACC / ASR / RA / DER lists on the victim, with a summary of each."""
    target = resolve_target(bundle, "victim" if victim == "scratch" else victim)
    engine = TargetEngine(bundle, target, bundle.names, test, device)
    as_is = as_is_metrics(engine, target, bundle.layout)
    g = torch.Generator().manual_seed(seed)

    t0 = time.perf_counter()
    vectors = sample(bundle, n, sampler, steps, g, device)
    sets = {"generated": vectors[finite_rows(vectors)], "originals": bundle.originals}
    sample_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    sets.update(defence_sets(bundle, target.state, train, test, g, k_defence or len(bundle.originals), device))
    defence_s = time.perf_counter() - t0

    methods = {}
    for name in METHODS:
        res = engine.run(sets[name]) if len(sets[name]) else {"acc": [], "asr": [], "ra": []}
        m = method_metrics(res, as_is, backdoor=True)
        m["summary"] = {metric: summary(m[metric]) for metric in ("acc", "asr", "ra", "der")}
        methods[name] = m
    return {"task": bundle.task.name, "victim": {"name": target.name, **as_is, "trigger": target.trigger.to_dict()},
            "n": n, "seed": seed, "sampler": sampler, "layers": bundle.names, "methods": methods,
            "nonfinite": int((~finite_rows(vectors)).sum()),
            "timings_s": {"sample": sample_s, "defences": defence_s}, "device": str(device)}


def table(report: dict) -> str:
    """One line per method: mean (and min..max) ACC, ASR, RA and DER."""
    v = report["victim"]
    lines = [f"victim {v['name']}: ACC {v['acc']:.2f}  ASR {v['asr']:.2f}  RA {v['ra']:.2f}",
             f"{'method':<10} {'n':>4} {'ACC mean':>9} {'ASR mean':>9} {'RA mean':>8} {'DER mean':>9} {'DER best':>9}"]
    for name, m in report["methods"].items():
        s = m["summary"]
        if not m["acc"]:
            lines.append(f"{name:<10} {0:>4}  (no finite parameter sets)")
            continue
        lines.append(f"{name:<10} {len(m['acc']):>4} {s['acc']['mean']:>9.2f} {s['asr']['mean']:>9.2f} "
                     f"{s['ra']['mean']:>8.2f} {s['der']['mean']:>9.3f} {s['der']['best']:>9.3f}")
    return "\n".join(lines)
