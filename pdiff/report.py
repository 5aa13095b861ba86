"""The whole measurement: sample -> splice -> evaluate -> baselines, similarity, t-SNE -> one report dict.

Shared by `python -m pdiff evaluate` and the app's Run button. Accuracies are in percent.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pdiff.backdoor import Trigger, der, triggered_test_set
from pdiff.baselines import baseline_sets, defence_sets
from pdiff.bundle import Bundle, BundleError
from pdiff.collect import Split
from pdiff.data import load_split, normalize
from pdiff.evaluate import BatchedEvaluator, accuracies, iou_matrix, mean_offdiag, summary, tsne_2d
from pdiff.params import normalize as normalize_params
from pdiff.params import tensor_std
from pdiff.sample import sample
from pdiff.splice import finite_rows, select_layers, stacked_params
from pdiff.targets import check_architecture, load_target

Progress = Callable[[float, str], None]
NOT_APPLICABLE = "not applicable: the clean target has no backdoor"


@dataclass
class Target:
    name: str                      # "clean", "victim" or the uploaded file's name
    state: dict[str, torch.Tensor]
    trigger: Trigger | None        # None: backdoor metrics do not apply


def resolve_target(bundle: Bundle, target: str) -> Target:
    """'clean', 'victim' (alias 'scratch'), a named victim of the bundle ('finetuned-blended', or just
    'finetuned' for its first fine-tuned one), or else a model file, loaded safely."""
    victim_meta = bundle.meta.get("victim") or {}
    trigger = Trigger.from_dict(victim_meta["trigger"]) if victim_meta.get("trigger") else Trigger()
    if target == "clean":
        return Target("clean", bundle.base_state, None)
    if target in ("victim", "scratch"):
        if bundle.victim_state is None:
            raise BundleError("this bundle ships no victim model; choose the clean target or upload a model")
        return Target("victim", bundle.victim_state, trigger)
    name = named_victim(bundle, target)
    if name is not None:
        return Target(name, bundle.victims[name], Trigger.from_dict(bundle.meta["victims"][name]["trigger"]))
    if "/" not in str(target) and "." not in str(target) and not Path(target).exists():
        known = ", ".join(["clean", "victim", *bundle.victims]) or "clean"
        raise BundleError(f"no target {target!r} in this bundle (it has: {known}); or give a model file")
    model = load_target(bundle.task, target)
    return Target(str(target).rsplit("/", 1)[-1], model.state_dict(), _sibling_trigger(target) or trigger)


def named_victim(bundle: Bundle, target: str) -> str | None:
    """The bundle victim a name means: an exact name, or a kind ('finetuned') -> its BadNets one first."""
    if target in bundle.victims:
        return target
    kind = sorted((n for n in bundle.victims if n.startswith(f"{target}-")), key=lambda n: not n.endswith("-badnets"))
    return kind[0] if kind else None


def _sibling_trigger(model_path: str) -> Trigger | None:
    """The trigger recorded in a victim report beside the model file (victim-*.json), if there is one."""
    report = Path(model_path).with_suffix(".json")
    try:
        meta = json.loads(report.read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") == "pdiff-victim" and isinstance(meta.get("trigger"), dict):
        return Trigger.from_dict(meta["trigger"])
    return None


class TargetEngine:
    """A target model with its clean and (for a backdoored target) triggered test sets cached."""

    def __init__(self, bundle: Bundle, target: Target, layers: list[str], test: Split, device):
        self.layout, self.layers, self.state, self.labels = bundle.layout, layers, target.state, test.labels
        model = check_architecture(bundle.task, target.state)
        self.clean = BatchedEvaluator(model, test.normalized(device), layers, device)
        self.trigger = target.trigger
        if target.trigger is not None:
            images, self.trig_labels = triggered_test_set(test.images, test.labels, target.trigger)
            self.triggered = BatchedEvaluator(model, normalize(images.to(device), test.dataset), layers, device)

    def run(self, vectors: torch.Tensor) -> dict:
        """(M, P) finite vectors -> wrong-prediction masks and acc (and asr, ra) lists."""
        stacked = stacked_params(vectors, self.layout, self.state, self.layers)
        pred = self.clean.predict_many(stacked)
        out = {"acc": accuracies(pred, self.labels), "wrong": pred != self.labels[None]}
        if self.trigger is not None:
            tp = self.triggered.predict_many(stacked)
            out["asr"] = (100.0 * (tp == self.trigger.target).double().mean(1)).tolist()
            out["ra"] = accuracies(tp, self.trig_labels)
        return out


def method_metrics(result: dict, as_is: dict, backdoor: bool) -> dict:
    """acc (and asr, ra, der against the target as-is) lists of one source, from TargetEngine.run."""
    out = {"acc": result["acc"]}
    if backdoor:
        out.update(asr=result["asr"], ra=result["ra"],
                   der=der(as_is["acc"], as_is["asr"], result["acc"], result["asr"]))
    return out


def as_is_metrics(engine: TargetEngine, target: Target, layout) -> dict:
    """The target's own metrics: its own values of the bundle's layers, spliced back unchanged."""
    own = torch.cat([target.state[n].reshape(-1).float() for n, _ in layout])[None]
    res = engine.run(own)
    return {k: v[0] for k, v in res.items() if k != "wrong"}


def run_report(bundle: Bundle, target: str = "clean", n: int = 100, seed: int = 0, sampler: str = "ddim",
               steps: int | None = 50, layers: list[str] | None = None, device="cpu", test: Split | None = None,
               progress: Progress | None = None, with_baselines: bool = True, with_tsne: bool = True,
               defences_train: Split | None = None):
    """Sample n parameter sets, splice them into `target`, evaluate everything; returns (report, vectors).

    With `defences_train` (the training split) and a backdoored target, the finetune and reinit
    defences (`baselines.defence_sets`, min(n, K) sets each) are evaluated beside the rest.
    """
    say = progress or (lambda frac, desc: None)
    layers = select_layers(bundle.layout, layers)
    test = test or Split(*load_split(bundle.task.dataset, "test"), bundle.task.dataset)
    tgt = resolve_target(bundle, target)
    engine = TargetEngine(bundle, tgt, layers, test, device)

    # sample
    say(0.0, "sampling")
    t0 = time.perf_counter()
    vectors = sample(bundle, n, sampler, steps, torch.Generator().manual_seed(seed), device,
                     progress=lambda i, total: say(0.6 * i / total, "sampling"))
    sample_s = time.perf_counter() - t0
    finite = finite_rows(vectors)

    # evaluate generated, originals and baselines with the same engine
    say(0.6, "evaluating")
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(seed + 1)
    sets = {"generated": vectors[finite], "originals": bundle.originals}
    if with_baselines:
        sets.update(baseline_sets(bundle.originals, tensor_std(bundle.originals, bundle.layout), bundle.layout,
                                  min(n, len(bundle.originals)), g))
    if defences_train is not None and tgt.trigger is not None:
        say(0.65, "defence baselines (fine-tune, re-init)")
        sets.update(defence_sets(bundle.task, bundle.layout, tgt.state, defences_train, test, g,
                                 min(n, len(bundle.originals)), device))
    empty = {"acc": [], "asr": [], "ra": [], "wrong": torch.zeros(0, len(test.labels), dtype=torch.bool)}
    results = {name: engine.run(v) if len(v) else empty for name, v in sets.items()}
    evaluate_s = time.perf_counter() - t0
    as_is = as_is_metrics(engine, tgt, bundle.layout)

    def metrics(name: str) -> dict:
        return method_metrics(results[name], as_is, tgt.trigger is not None)

    # similarity: IoU of wrong-prediction sets, all pairs by matrix products
    say(0.8, "similarity")
    orig_wrong = results["originals"]["wrong"]
    oo = iou_matrix(orig_wrong, orig_wrong)
    sim = {"max_iou_to_originals": _max_iou(results["generated"]["wrong"], orig_wrong),
           "mean_iou": {"oo": mean_offdiag(oo), "gg": _self_iou(results["generated"]["wrong"]),
                        "og": _cross_iou(orig_wrong, results["generated"]["wrong"])},
           "baselines": {name: {"max_iou_to_originals_mean": _mean(_max_iou(results[name]["wrong"], orig_wrong)),
                                "mean_iou_bb": _self_iou(results[name]["wrong"]),
                                "mean_iou_ob": _cross_iou(orig_wrong, results[name]["wrong"])}
                         for name in sets if name not in ("generated", "originals")}}

    # t-SNE of the normalised vectors: originals, generated and baselines in one embedding
    tsne = {"x": [], "y": [], "source": [], "acc": []}
    if with_tsne:
        say(0.9, "t-SNE")
        names = list(sets)
        joint = torch.cat([normalize_params(sets[k], bundle.norm_mean, bundle.norm_std, bundle.layout) for k in names])
        xy = tsne_2d(joint, seed)
        tsne = {"x": xy[:, 0].tolist(), "y": xy[:, 1].tolist(),
                "source": [k for k in names for _ in range(len(sets[k]))],
                "acc": [a for k in names for a in results[k]["acc"]]}

    target_info = {"name": tgt.name, "acc": as_is["acc"]}
    if tgt.trigger is not None:
        target_info.update(asr=as_is["asr"], ra=as_is["ra"], trigger=tgt.trigger.to_dict())
    report = {
        "task": bundle.task.name, "bundle": str(bundle.path) if bundle.path else None, "target": target_info,
        "backdoor": "applicable" if tgt.trigger is not None else NOT_APPLICABLE,
        "n": n, "seed": seed, "sampler": sampler, "steps": steps if sampler == "ddim" else bundle.ddpm_cfg.timesteps,
        "layers": layers,
        # finite_index: row of the saved parameter file behind each entry of the lists above
        "generated": {**metrics("generated"), "nonfinite": int((~finite).sum()),
                      "finite_index": finite.nonzero().flatten().tolist()},
        "originals": metrics("originals"),
        "baselines": {name: metrics(name) for name in sets if name not in ("generated", "originals")},
        "summary": {name: summary(results[name]["acc"]) for name in sets},
        "similarity": sim, "tsne": tsne,
        "timings_s": {"sample": sample_s, "evaluate": evaluate_s}, "device": str(device),
        "test_size": len(test.labels),
    }
    if tgt.trigger is not None:
        report["summary_asr"] = {name: summary(results[name]["asr"]) for name in sets}
        report["summary_der"] = {name: summary(metrics(name)["der"]) for name in sets}
    say(1.0, "done")
    return report, vectors


def _max_iou(wrong: torch.Tensor, orig_wrong: torch.Tensor) -> list[float]:
    return iou_matrix(wrong, orig_wrong).max(1).values.tolist() if len(wrong) else []


def _self_iou(wrong: torch.Tensor) -> float:
    return mean_offdiag(iou_matrix(wrong, wrong))


def _cross_iou(a: torch.Tensor, b: torch.Tensor) -> float | None:
    return iou_matrix(a, b).mean().item() if len(a) and len(b) else None


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def familiar_lines(report: dict) -> str:
    """The reference tool's printout: sorted accuracies, then average, max, min, median."""
    acc = sorted(report["generated"]["acc"])
    s = report["summary"]["generated"]
    lines = [f"generated accuracies (sorted): {[round(a, 2) for a in acc]}"]
    if acc:
        lines += [f"average: {s['mean']:.2f}", f"max: {s['best']:.2f}", f"min: {s['min']:.2f}",
                  f"median: {s['median']:.2f}"]
    o = report["summary"]["originals"]
    lines.append(f"originals: best {o['best']:.2f} mean {o['mean']:.2f} median {o['median']:.2f} min {o['min']:.2f}")
    t = report["target"]
    lines.append(f"target {t['name']}: acc {t['acc']:.2f}" + (f" asr {t['asr']:.2f} ra {t['ra']:.2f}" if "asr" in t else ""))
    return "\n".join(lines)
