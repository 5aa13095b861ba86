"""The measurement engine: many parameter sets at once on one target, per-source metrics and similarity.

Every command that measures (evaluate, transfer, leave-one-trunk-out, the app) builds a dict of
parameter sets by source, hands it with a `TargetEngine` to `measure`, and only chooses the sources
and formats the result. Within the engine the parameter sets run under vmap: on a StagedNet the trunk is
computed once and only the generated tail runs per model; any other module runs whole.
"""
from __future__ import annotations

import time
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

from pdiff.archs import StagedNet
from pdiff.backdoor import der, triggered_test_set
from pdiff.config import Task
from pdiff.data import Split
from pdiff.params import BN_STATISTICS, Layout, own_vector
from pdiff.splice import select_layers, stacked_params
from pdiff.targets import Target, check_architecture


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, start: int = 0, stop: int | None = None,
            batch_size: int = 2000) -> torch.Tensor:
    """Run stages [start, stop) of a StagedNet, or any module whole, (eval mode) over `images` in batches."""
    staged = isinstance(model, StagedNet)
    if not staged and (start, stop) != (0, None):
        raise ValueError(f"{type(model).__name__} is not a StagedNet: it runs whole, not stages {start} to {stop}")
    was_training = model.training
    model.eval()
    outs = [model(images[i:i + batch_size], start, stop) if staged else model(images[i:i + batch_size])
            for i in range(0, len(images), batch_size)]
    model.train(was_training)
    return torch.cat(outs)


def accuracy(logits_or_pred: torch.Tensor, labels: torch.Tensor) -> float:
    pred = logits_or_pred.argmax(-1) if logits_or_pred.is_floating_point() else logits_or_pred
    return 100.0 * (pred == labels).double().mean().item()


def first_stage(model: nn.Module, layers: list[str]) -> int | None:
    """Where a StagedNet splits into the frozen trunk and the tail holding `layers`: the first stage any of them
    touches. None for any other module: it runs whole (under vmap the layers before the first generated one
    still run once per chunk of models, not once per model, since their inputs are not batched)."""
    return min(model.stage_of(n) for n in layers) if isinstance(model, StagedNet) else None


def stitch_point(model: nn.Module, layers: list[str]) -> int:
    """first_stage, for a stitch (see stitch.py): it maps a trunk's output, so the model must be staged."""
    if not isinstance(model, StagedNet):
        raise ValueError(f"a stitch needs a staged model; {type(model).__name__} runs whole")
    return first_stage(model, layers)


def tail_input(model: nn.Module, images: torch.Tensor, start: int | None) -> torch.Tensor:
    """What the tail from `start` takes: the trunk's output for a staged model, the images themselves otherwise."""
    return images if start is None else predict(model, images, 0, start)


def tail_kwargs(start: int | None) -> dict:
    """forward() arguments that run only the tail (functional_call takes them as its kwargs)."""
    return {} if start is None else {"start": start}


@torch.no_grad()
def largest_activation(model: nn.Module, x: torch.Tensor) -> int:
    """The most numbers any leaf module outputs for the one-example batch `x`: what bounds a whole model's memory."""
    sizes = [x.numel()]

    def hook(_module, _inputs, out):
        if isinstance(out, torch.Tensor):
            sizes.append(out.numel())

    hooks = [m.register_forward_hook(hook) for m in model.modules() if not any(True for _ in m.children())]
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    return max(sizes)


class BatchedEvaluator:
    """Predictions of many parameter sets on one image set.

    For a StagedNet, the stages before the first generated layer are the same for every parameter set, so
    their output is computed once and cached (on `device`); only the tail runs per model. Any other module
    runs whole (`torch.func.functional_call` over the whole model). Either way under `vmap` over the stacked
    parameters; chunks over models and images bound memory. `feature_map` (a stitch) is applied to the
    cached trunk output once, so it costs nothing per parameter set (staged models only).
    """

    def __init__(self, model: nn.Module, images: torch.Tensor, layers: list[str],
                 device: str | torch.device = "cpu", max_elements: int = 2**26, feature_map: Callable | None = None):
        self.model = model.to(device).eval()
        self.start = first_stage(model, layers) if feature_map is None else stitch_point(model, layers)
        self.features = _mapped(tail_input(self.model, images.to(device), self.start), feature_map)  # the trunk, once
        # numbers per image and model in the vmapped part; a whole model's largest activation bounds it
        self.per_image = (self.features[0].numel() if self.start is not None
                          else largest_activation(self.model, self.features[:1]))
        self.max_elements = max_elements
        kwargs = tail_kwargs(self.start)

        def tail(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.model, params, (x,), kwargs).argmax(-1)

        self._tail = vmap(tail, in_dims=(0, None))

    @torch.no_grad()
    def predict_many(self, stacked: dict[str, torch.Tensor], models_per_chunk: int = 64) -> torch.Tensor:
        """{name: (N, *shape)} -> predicted classes (N, n_images), int64, on the CPU."""
        n = len(next(iter(stacked.values())))
        device = self.features.device
        out = []
        for m0 in range(0, n, models_per_chunk):
            chunk = {k: v[m0:m0 + models_per_chunk].to(device) for k, v in stacked.items()}
            m = len(next(iter(chunk.values())))
            images_per_chunk = max(1, self.max_elements // (m * self.per_image))
            preds = [self._tail(chunk, self.features[i:i + images_per_chunk])
                     for i in range(0, len(self.features), images_per_chunk)]
            out.append(torch.cat(preds, dim=1).cpu())
        return torch.cat(out)


def _mapped(features: torch.Tensor, feature_map: Callable | None) -> torch.Tensor:
    with torch.no_grad():
        return features if feature_map is None else feature_map(features)


def accuracies(pred: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """(N, n_images) predictions -> N accuracies in percent."""
    return (100.0 * (pred == labels[None]).double().mean(1)).tolist()


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
        for owner, stage in self.owners:
            def bn_input(params, x, stage=stage):
                return functional_call(self.model, params, (x,), {"start": self.start, "stop": stage})

            means, variances = [], []
            for m0 in range(0, n, models_per_chunk):  # chunks bound the activations' memory
                chunk = {k: v[m0:m0 + models_per_chunk].to(self.features.device) for k, v in stacked.items()}
                flat = vmap(bn_input, in_dims=(0, None))(chunk, self.features).transpose(1, 2).flatten(2)  # M, C, n*HW
                # as a train-mode pass with momentum=None: the batch mean and the unbiased variance
                means.append(flat.mean(2).cpu())
                variances.append(flat.var(2, unbiased=True).cpu())
            stacked[f"{owner}.running_mean"], stacked[f"{owner}.running_var"] = torch.cat(means), torch.cat(variances)
        self.seconds += time.perf_counter() - t0
        return stacked


class TargetEngine:
    """A target model with its clean and (for a backdoored target) triggered test sets cached.

    `run` evaluates (M, P) vectors of the layout spliced into the selected layers; the target keeps
    its own values elsewhere. `as_is` is the target with its own values: the reference for DER. With
    `bn_images` (clean training images), BatchNorm statistics in the layout that follow a generated layer
    are re-estimated per parameter set instead of spliced. `feature_map` (a stitch, see stitch.py) maps the
    trunk's output before the tail, everywhere; `reference`: the as-is metrics DER is measured against, when
    they are not this target's own (a stitched victim is judged against the victim as it is).
    """

    def __init__(self, task: Task, layout: Layout, target: Target, test: Split, layers: list[str] | None = None,
                 device: str | torch.device = "cpu", bn_images: Split | None = None,
                 feature_map: Callable | None = None, reference: dict | None = None):
        self.layout, self.layers, self.labels = layout, select_layers(layout, layers), test.labels
        self.target, self.trigger = target, target.trigger
        self.task, self.test, self.device, self.feature_map = task, test, device, feature_map
        model = check_architecture(task, target.state)
        self.clean = BatchedEvaluator(model, test.normalized(device), self.layers, device, feature_map=feature_map)
        stats = [n for n in self.layers if n.rsplit(".", 1)[-1] in BN_STATISTICS]
        if bn_images is not None and stats and self.clean.start is None:
            raise ValueError(f"re-estimating BatchNorm statistics needs a StagedNet; {type(model).__name__} runs whole")
        stats = [n for n in stats if self.clean.start is not None and model.stage_of(n) > self.clean.start]
        self.bn = (BatchNormEstimator(model, bn_images.normalized(device), self.clean.start, stats, device,
                                       feature_map)
                   if bn_images is not None and stats else None)
        if self.trigger is not None:
            images, self.trig_labels = triggered_test_set(test.images, test.labels, self.trigger)
            self.triggered = BatchedEvaluator(model, test.prepare(images, device), self.layers, device,
                                              feature_map=feature_map)
        self._as_is: dict | None = reference
        self._memo: dict = {}  # results of parameter sets that do not change between calls (the originals)

    @property
    def backdoor(self) -> bool:
        return self.trigger is not None

    def run(self, vectors: torch.Tensor, fixed: bool = False, reestimate: bool = True) -> dict:
        """(M, P) finite vectors -> wrong-prediction masks (M, n) and acc (and asr, ra) lists.

        fixed: the same tensor will come again (the bundle's originals): its result is kept and reused.
        reestimate: re-estimate BatchNorm statistics (where the engine does); the target as-is keeps its own.
        """
        key = (id(vectors), tuple(vectors.shape))
        if fixed and key in self._memo:
            return self._memo[key]
        if fixed:
            self._memo[key] = self.run(vectors)
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
            fixed: tuple[str, ...] = ("originals",), space: Callable | None = None) -> dict:
    """The one measurement: every source's parameter sets on the engine's target; the `fixed` sources
    (their tensors are the same on every call, whatever the seed) are evaluated once per engine.

    Returns {"metrics": {source: acc/asr/ra/der lists}, "summary": {source: {metric: best/mean/median/min/std}},
    "similarity": {source: IoU measures against `reference`}} (similarity only when `reference` is a source;
    with `space`, a map of raw vectors into a comparison space, each model's distance to its nearest
    reference model too).
    """
    results = {name: engine.run(vectors, fixed=name in fixed) for name, vectors in sets.items()}
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


# ---- similarity ------------------------------------------------------------------------
def iou_matrix(wrong_a: torch.Tensor, wrong_b: torch.Tensor) -> torch.Tensor:
    """IoU of wrong-prediction sets for all pairs: 0/1 masks (A, n), (B, n) -> (A, B), by matrix products."""
    a, b = wrong_a.double(), wrong_b.double()
    inter = a @ b.T
    union = a.sum(1, keepdim=True) + b.sum(1)[None] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))  # two perfect models agree


def mean_offdiag(m: torch.Tensor) -> float | None:
    """Mean of a square similarity matrix without its diagonal (self-similarity); None below 2 models."""
    n = len(m)
    return None if n < 2 else ((m.sum() - m.diagonal().sum()) / (n * (n - 1))).item()


def similarity(wrong: dict[str, torch.Tensor], reference: str = "originals") -> dict[str, dict]:
    """IoU of wrong-prediction sets, per source: each model's max IoU to the reference models, the mean IoU
    within the source, the mean IoU between the source and the reference, and coverage: the share of
    reference models that some model of the source is closer to (by IoU) than their nearest other
    reference model. A collapsed generator covers few; a copying one covers many at max IoU near 1."""
    ref = wrong[reference]
    rr = iou_matrix(ref, ref)
    nearest_other = (rr - 2 * torch.eye(len(ref), dtype=rr.dtype)).max(1).values  # each one's closest other
    out = {reference: {"self_iou": mean_offdiag(rr), "nearest_other_iou": nearest_other.tolist(),
                       "nearest_other_iou_mean": nearest_other.mean().item() if len(ref) > 1 else None}}
    for name, w in wrong.items():
        if name == reference:
            continue
        sr = iou_matrix(w, ref) if len(w) and len(ref) else None
        max_iou = sr.max(1).values.tolist() if sr is not None else []
        out[name] = {"max_iou": max_iou, "max_iou_mean": _mean(max_iou), "self_iou": mean_offdiag(iou_matrix(w, w)),
                     "cross_iou": sr.mean().item() if sr is not None else None,
                     "coverage": (sr.max(0).values > nearest_other).double().mean().item()
                     if sr is not None and len(ref) > 1 else None}
    return out


def nearest_distances(space: torch.Tensor, reference: torch.Tensor) -> list[float]:
    """Each vector's L2 distance to its nearest reference vector (both already in one comparison space)."""
    return torch.cdist(space.double(), reference.double()).min(1).values.tolist() if len(space) else []


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


# ---- t-SNE -----------------------------------------------------------------------------
def tsne_2d(x: torch.Tensor, seed: int = 0, pca_dims: int = 50) -> torch.Tensor:
    """One joint 2-D embedding: PCA to at most `pca_dims` first, fixed seed, perplexity clamped for small N."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    data = x.double().numpy()
    n = len(data)
    if n < 3:
        return torch.zeros(n, 2)
    dims = min(pca_dims, n, data.shape[1])
    if dims < data.shape[1]:
        data = PCA(n_components=dims, random_state=seed).fit_transform(data)
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
    return torch.from_numpy(TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(data)).float()


def summary(values: list[float]) -> dict[str, float]:
    """best / mean / median / min, and the std over models (0 for one model)."""
    t = torch.tensor(values, dtype=torch.float64)
    if len(t) == 0:
        return {"best": None, "mean": None, "median": None, "min": None, "std": None}
    return {"best": t.max().item(), "mean": t.mean().item(), "median": t.quantile(0.5).item(), "min": t.min().item(),
            "std": t.std().item() if len(t) > 1 else 0.0}
