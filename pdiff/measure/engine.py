"""The measurement engine: many parameter sets at once on one target, per-source metrics and similarity.

Every command that measures (evaluate, transfer, leave-one-trunk-out, the app) builds a dict of
parameter sets by source, hands it with a `TargetEngine` to `measure`, and only chooses the sources
and formats the result. Within the engine the parameter sets run under vmap (models.staged): on a
StagedNet the trunk is computed once and only the generated tail runs per model; any other module runs whole.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.func import functional_call, vmap

from pdiff.core import dist
from pdiff.core.config import Task
from pdiff.core.files import tensor_digest
from pdiff.core.params import BN_STATISTICS, Layout, own_vector
from pdiff.core.splice import select_layers, stacked_params
from pdiff.data.datasets import Split
from pdiff.data.triggers import der, triggered_test_set
from pdiff.measure.similarity import TsneMap, _mean, nearest_distances, similarity, summary
from pdiff.measure.store import ResultStore, Store, engine_key, split_digest
from pdiff.measure.targets import Target
from pdiff.models.archs import StagedNet
from pdiff.models.loading import check_architecture
from pdiff.models.staged import BatchedEvaluator, _mapped, accuracies, predict


BN_IMAGES = 512  # clean training images BatchNorm statistics after a generated layer are re-estimated on

class BatchNormEstimator:
    """BatchNorm running statistics re-estimated for many parameter sets at once, on a few hundred clean
    images: the statistics a generated convolution's outputs really have, in place of constant copies."""

    def __init__(self, model: StagedNet, images: torch.Tensor, start: int, stat_names: list[str], device,
                 feature_map: Callable | None = None):
        self.model, self.start, self.seconds = model, start, 0.0
        self.features = _mapped(predict(model, images.to(device), 0, start), feature_map)
        owners = sorted({n.rsplit(".", 1)[0] for n in stat_names}, key=lambda o: model.stage_of(f"{o}.weight"))
        self.owners = [(o, model.stage_of(f"{o}.weight")) for o in owners]

    @torch.no_grad()
    def __call__(self, stacked: dict[str, torch.Tensor], models_per_chunk: int = 16) -> dict[str, torch.Tensor]:
        """{name: (N, *shape)} -> the same with each owner's running_mean / running_var re-estimated, in stage
        order (a later BatchNorm's input depends on the earlier ones' statistics)."""
        t0 = time.perf_counter()
        stacked = dict(stacked)
        n = len(next(iter(stacked.values())))
        starts = list(range(0, n, models_per_chunk))
        for owner, stage in self.owners:
            def bn_input(params, x, stage=stage):
                return functional_call(self.model, params, (x,), {"start": self.start, "stop": stage})

            def chunk(m0: int) -> tuple[torch.Tensor, torch.Tensor]:  # chunks bound the activations' memory
                part = {k: v[m0:m0 + models_per_chunk].to(self.features.device) for k, v in stacked.items()}
                flat = vmap(bn_input, in_dims=(0, None))(part, self.features).transpose(1, 2).flatten(2)  # M, C, n*HW
                # as a train-mode pass with momentum=None: the batch mean and the unbiased variance
                return flat.mean(2).cpu(), flat.var(2, unbiased=True).cpu()

            # under torchrun the chunks are shared out by stride and gathered (core.dist)
            parts = dist.gather([chunk(starts[i]) for i in dist.mine(len(starts))], len(starts))
            stacked[f"{owner}.running_mean"] = torch.cat([mean for mean, _ in parts])
            stacked[f"{owner}.running_var"] = torch.cat([var for _, var in parts])
        self.seconds += time.perf_counter() - t0
        return stacked

@dataclass(frozen=True)
class FeatureMap:
    """What a stitched engine applies to the trunk's output before the tail (measure.stitch), and the metrics
    of the target before stitching that DER is judged against."""
    fn: Callable[[torch.Tensor], torch.Tensor]
    reference: dict


class TargetEngine:
    """A target model with its clean and (for a backdoored target) triggered test sets cached.

    `run` evaluates (M, P) vectors of the layout spliced into the selected layers; the target keeps
    its own values elsewhere. `as_is` is the target with its own values: the reference for DER. With
    `bn_images` (clean training images), BatchNorm statistics in the layout that follow a generated layer
    are re-estimated per parameter set instead of spliced. `feature_map` (a stitch) maps the trunk's output
    before the tail, everywhere, and carries the as-is metrics of the unstitched target.
    """

    MEMO_SIZE = 256

    def __init__(self, task: Task, layout: Layout, target: Target, test: Split, layers: list[str] | None = None,
                 device: str | torch.device = "cpu", bn_images: Split | None = None,
                 feature_map: FeatureMap | None = None):
        self.layout, self.layers, self.labels = layout, select_layers(layout, layers), test.labels
        self.target, self.trigger = target, target.trigger
        self.task, self.test, self.device, self.feature_map = task, test, device, feature_map
        fn = feature_map.fn if feature_map is not None else None
        model = check_architecture(task, target.state)
        self.clean = BatchedEvaluator(model, test.normalized(device), self.layers, device, feature_map=fn)
        stats = [n for n in self.layers if n.rsplit(".", 1)[-1] in BN_STATISTICS]
        if bn_images is not None and stats and self.clean.start is None:
            raise ValueError(f"re-estimating BatchNorm statistics needs a StagedNet; {type(model).__name__} runs whole")
        stats = [n for n in stats if self.clean.start is not None and model.stage_of(n) > self.clean.start]
        self.bn = (BatchNormEstimator(model, bn_images.normalized(device), self.clean.start, stats, device, fn)
                   if bn_images is not None and stats else None)
        if self.trigger is not None:
            images, self.trig_labels = triggered_test_set(test.images, test.labels, self.trigger)
            self.triggered = BatchedEvaluator(model, test.prepare(images, device), self.layers, device, feature_map=fn)
        self._as_is: dict | None = feature_map.reference if feature_map is not None else None
        # results of parameter sets that come again (the originals, controls drawn at a fixed seed), by content
        self._memo: OrderedDict[str, dict] = OrderedDict()
        self.unsaved: set[str] = set()  # memo entries computed here that a store has not written yet

    @property
    def backdoor(self) -> bool:
        return self.trigger is not None

    def run(self, vectors: torch.Tensor, fixed: bool = False, reestimate: bool = True) -> dict:
        """(M, P) finite vectors -> wrong-prediction masks (M, n) and acc (and asr, ra) lists.

        fixed: the same numbers will come again (the originals, a control drawn at a fixed seed): the result is
        kept by the vectors' content (MEMO_SIZE of them) and reused, whatever tensor holds them.
        reestimate: re-estimate BatchNorm statistics (where the engine does); the target as-is keeps its own.
        """
        if fixed and len(vectors):
            key = tensor_digest(vectors)
            if key in self._memo:
                self._memo.move_to_end(key)
                return self._memo[key]
            self.remember({key: self.run(vectors)})
            self.unsaved.add(key)
            return self._memo[key]
        if len(vectors) == 0:
            out = {"acc": [], "wrong": torch.zeros(0, len(self.labels), dtype=torch.bool)}
            return {**out, "asr": [], "ra": []} if self.backdoor else out
        stacked = stacked_params(vectors, self.layout, self.target.state, self.layers)
        if self.bn is not None and reestimate:
            stacked = self.bn(stacked)
        pred = self.clean.predict_many(stacked)
        out = {"acc": accuracies(pred, self.labels), "wrong": pred != self.labels[None]}
        if self.backdoor:
            tp = self.triggered.predict_many(stacked)
            out["asr"] = (100.0 * (tp == self.trigger.target).double().mean(1)).tolist()
            out["ra"] = accuracies(tp, self.trig_labels)
        return out

    def evaluators(self) -> list[BatchedEvaluator]:
        """The clean test set's evaluator, and the triggered one's for a backdoored target."""
        return [self.clean, *([self.triggered] if self.backdoor else [])]

    def remember(self, results: dict[str, dict]) -> None:
        """Memo entries ({content digest: run result}) from a store or a run; the oldest beyond MEMO_SIZE go."""
        self._memo.update(results)
        while len(self._memo) > self.MEMO_SIZE:
            self.unsaved.discard(self._memo.popitem(last=False)[0])

    def remembered(self) -> dict[str, dict]:
        return dict(self._memo)

    def as_is(self) -> dict:
        """The target's own metrics: its own values of the layout's layers, spliced back unchanged."""
        if self._as_is is None:
            own = own_vector(self.target.state, self.layout)
            self._as_is = {k: v[0] for k, v in self.run(own, reestimate=False).items() if k != "wrong"}
        return self._as_is

    def measure_state(self, state: dict[str, torch.Tensor], name: str = "defended") -> dict:
        """acc (and asr, ra, der) lists of one whole model, a defence that changed more than the layout's layers:
        measured on the same test (and triggered) images, DER against this engine's target as-is."""
        other = TargetEngine(self.task, self.layout, Target(name, state, self.trigger), self.test, self.layers,
                             self.device)
        own = other.as_is()
        return self.metrics({k: [own[k]] for k in ("acc", "asr", "ra") if k in own})

    def metrics(self, result: dict) -> dict:
        """acc (and asr, ra, der against the target as-is) lists of one source, from `run`."""
        out = {"acc": result["acc"]}
        if self.backdoor:
            base = self.as_is()
            out.update(asr=result["asr"], ra=result["ra"], der=der(base["acc"], base["asr"], result["acc"], result["asr"]))
        return out

def measure(engine: TargetEngine, sets: dict[str, torch.Tensor], reference: str | None = "originals",
            fixed: tuple[str, ...] = ("originals",), space: Callable | None = None, known: dict | None = None) -> dict:
    """The one measurement: every source's parameter sets on the engine's target; the `fixed` sources
    (their tensors are the same on every call, whatever the seed) are evaluated once per engine.

    Returns {"metrics": {source: acc/asr/ra/der lists}, "summary": {source: {metric: best/mean/median/min/std}},
    "similarity": {source: IoU measures against `reference`}} (similarity only when `reference` is a source;
    with `space`, a map of raw vectors into a comparison space, each model's distance to its nearest
    reference model too). `known`: engine.run results of sources already run (a report measured in stages).
    """
    known = known or {}
    results = {name: known[name] if name in known else engine.run(vectors, fixed=name in fixed)
               for name, vectors in sets.items()}
    metrics = {name: engine.metrics(r) for name, r in results.items()}
    out = {"metrics": metrics,
           "summary": {name: {k: summary(v) for k, v in m.items()} for name, m in metrics.items()}}
    if reference in results:
        out["similarity"] = similarity({name: r["wrong"] for name, r in results.items()}, reference)
        if space is not None:
            ref = space(sets[reference])
            for name, vectors in sets.items():
                if name != reference:
                    dist = nearest_distances(space(vectors), ref)
                    out["similarity"][name].update(nearest_distance=dist, nearest_distance_mean=_mean(dist))
    return out


def _stored_trunk(engine: TargetEngine, store: Store) -> None:
    """The engine's trunk features from its store, or computed now and written there for the next process."""
    evaluators = dict(zip(("clean", "triggered"), engine.evaluators()))
    stored = store.read()
    if set(stored) == set(evaluators):
        try:
            for name, evaluator in evaluators.items():
                evaluator.features = stored[name]  # checked against the evaluator's images
            return
        except ValueError:
            pass
    store.write({name: evaluator.features for name, evaluator in evaluators.items()})


class EngineCache:
    """The last few TargetEngines, by (bundle, target, layers, split, device, BatchNorm images): a repeated request
    with another seed only samples, splices and evaluates its new sets. A bundle is keyed by its digest (bundle.json,
    which lists every file's checksum) and a target by its key (its weights and trigger), never by a name, so a
    changed upload is a new entry. Two callers asking for one key at once get one engine, built once.

    With `stored`, each engine's memo of seed-free results is read from its measure.store.ResultStore when the
    engine is built and written back by `save` (a bundle loaded from a folder has a digest; one in memory is never
    stored), and with `trunks` its trunk features too; `roots` overrides the store's folders (the last one is
    written)."""

    def __init__(self, size: int = 4, stored: bool = False, roots: list | None = None, trunks: bool = True):
        self.size, self._entries, self._lock = size, OrderedDict(), threading.Lock()
        self.stored, self.roots, self.trunks, self._building, self._maps = stored, roots, trunks, {}, OrderedDict()

    def get(self, bundle, target: Target, layers: list[str], test: Split, device,
            bn_images: Split | None = None) -> TargetEngine:
        key = (bundle.digest or f"memory:{id(bundle)}", target.key, tuple(layers), id(test), str(device),
               id(bn_images))
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                return self._entries[key][0]
            building = self._building.setdefault(key, threading.Lock())
        with building:  # one build per key: a second caller waits for the first and takes its engine
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)
                    return self._entries[key][0]
            try:
                engine = TargetEngine(bundle.task, bundle.layout, target, test, layers, device, bn_images)
                store = self._store(bundle, target, layers, test, device, bn_images)
                if store is not None:
                    engine.remember(store.load(len(test.labels)))
                    if self.trunks:
                        _stored_trunk(engine, Store(bundle.digest, store.key, self.roots, kind="trunk"))
                _ = [e.features for e in engine.evaluators()]  # the trunk runs here, under the key's lock
                with self._lock:
                    # keep what the key's ids point to alive
                    self._entries[key] = (engine, bundle, test, bn_images, store)
                    while len(self._entries) > self.size:
                        self._entries.popitem(last=False)
            finally:
                with self._lock:
                    self._building.pop(key, None)
        return engine

    def _store(self, bundle, target: Target, layers: list[str], test: Split, device,
               bn_images: Split | None) -> ResultStore | None:
        if not self.stored or not bundle.digest:
            return None
        bn = split_digest(bn_images.images, bn_images.labels) if bn_images is not None else None
        key = engine_key(target.key, layers, split_digest(test.images, test.labels), bn, device)
        return ResultStore(bundle.digest, key, self.roots)

    def save(self) -> list:
        """Write the seed-free results each stored engine computed since its last save; returns the files written."""
        with self._lock:
            entries = [(e[0], e[4]) for e in self._entries.values() if e[4] is not None and e[0].unsaved]
        written = []
        for engine, store in entries:
            path = store.save(engine.remembered())
            engine.unsaved.clear()
            written += [path] if path else []
        return written

    def tsne_map(self, bundle, reference: torch.Tensor, seed: int) -> TsneMap:
        """The t-SNE map of `reference` (comparison-space vectors of the sets that do not depend on a run), fitted
        once per bundle, reference and seed; with `stored`, its points are read from and written to disk."""
        key = f"{tensor_digest(reference)}-{seed}"
        with self._lock:
            if key in self._maps:
                return self._maps[key]
        store = Store(bundle.digest, key, self.roots, kind="tsne") if self.stored and bundle.digest else None
        stored = (store.read() if store else {}).get("coordinates")
        if stored is not None and stored.shape != (len(reference), 2):
            stored = None
        fitted = TsneMap(reference, seed, coordinates=stored)
        if store is not None and stored is None:
            store.write({"coordinates": fitted.coordinates})
        with self._lock:
            self._maps[key] = fitted
            while len(self._maps) > max(self.size, 0):
                self._maps.popitem(last=False)
        return fitted

    def __len__(self) -> int:
        return len(self._entries)
