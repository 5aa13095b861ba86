"""The staged forward: a StagedNet's trunk run once, its tail run for many parameter sets at once.

A StagedNet (models.archs) is a flat list of stages, so the stages before the first generated layer
(the frozen trunk) can be computed once and cached; only the tail runs per parameter set, under vmap.
Any other module runs whole (torch.func.functional_call over the whole model).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call, vmap

from pdiff.core import dist
from pdiff.models.archs import StagedNet


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


def tail_input(model: nn.Module, images: torch.Tensor, start: int | None, batch_size: int = 2000) -> torch.Tensor:
    """What the tail from `start` takes: the trunk's output for a staged model, the images themselves otherwise."""
    return images if start is None else predict(model, images, 0, start, batch_size)


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

    CACHE_ELEMENTS, MIN_IMAGES, CPU_TRUNK_BATCH = 2**21, 256, 128

    def __init__(self, model: nn.Module, images: torch.Tensor, layers: list[str],
                 device: str | torch.device = "cpu", max_elements: int = 2**26, feature_map: Callable | None = None,
                 shard: bool = True):
        self.model = model.to(device).eval()
        self.shard = shard  # False where each rank evaluates models of its own (a rank's trunk in collect)
        self.start = first_stage(model, layers) if feature_map is None else stitch_point(model, layers)
        images = images.to(device)
        self._features, self._pending = None, (images, feature_map)  # the trunk runs on first use (`features`)
        # numbers per image and model in the vmapped part (one image's); a whole model's largest activation bounds it
        one = _mapped(tail_input(self.model, images[:1], self.start), feature_map)
        self.per_image = one[0].numel() if self.start is not None else largest_activation(self.model, one)
        self.max_elements = max_elements
        kwargs = tail_kwargs(self.start)

        def tail(params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(self.model, params, (x,), kwargs).argmax(-1)

        self._tail = vmap(tail, in_dims=(0, None))

    @property
    def features(self) -> torch.Tensor:
        """The trunk's output for every image (the images themselves for a model that runs whole), computed once on
        first use: on a CPU in small batches, whose activations stay in cache (for the default task 2x faster than
        2,000 at a time, the same features bit for bit: every image is computed alone)."""
        if self._features is None:
            images, feature_map = self._pending
            batch = self.CPU_TRUNK_BATCH if images.device.type == "cpu" else 2000
            self._features, self._pending = _mapped(tail_input(self.model, images, self.start, batch), feature_map), None
        return self._features

    @features.setter
    def features(self, value: torch.Tensor) -> None:
        """The trunk's output computed before (measure.store keeps it): the trunk does not run."""
        images, _ = self._pending if self._pending is not None else (self._features, None)
        if value.shape[0] != images.shape[0]:
            raise ValueError(f"features for {value.shape[0]} images given to an evaluator of {images.shape[0]}")
        self._features, self._pending = value.to(images.device), None

    def images_per_chunk(self, models: int) -> int:
        """Images per vmapped call for `models` models: small enough that the activations stay in the CPU's cache
        (CACHE_ELEMENTS; 2.5x faster than memory-sized chunks for the default task's tail), never below
        MIN_IMAGES unless memory (max_elements) forbids. An accelerator wants the largest chunks memory allows."""
        per_model_image = models * self.per_image
        if self.features.device.type != "cpu":
            return max(1, self.max_elements // per_model_image)
        cached = max(self.CACHE_ELEMENTS // per_model_image, self.MIN_IMAGES)
        return max(1, min(cached, self.max_elements // per_model_image))

    @torch.no_grad()
    def predict_many(self, stacked: dict[str, torch.Tensor], models_per_chunk: int = 64) -> torch.Tensor:
        """{name: (N, *shape)} -> predicted classes (N, n_images), int64, on the CPU. Under torchrun the chunks of
        models are shared out by stride and gathered: every rank gets the one-process result. With `shard` off
        each rank evaluates every model it is given, alone."""
        n = len(next(iter(stacked.values())))
        device = self.features.device
        starts = list(range(0, n, models_per_chunk))

        def chunk(m0: int) -> torch.Tensor:
            part = {k: v[m0:m0 + models_per_chunk].to(device) for k, v in stacked.items()}
            m = len(next(iter(part.values())))
            images_per_chunk = self.images_per_chunk(m)
            preds = [self._tail(part, self.features[i:i + images_per_chunk])
                     for i in range(0, len(self.features), images_per_chunk)]
            return torch.cat(preds, dim=1).cpu()

        if not self.shard:
            return torch.cat([chunk(m0) for m0 in starts])
        return torch.cat(dist.gather([chunk(starts[i]) for i in dist.mine(len(starts))], len(starts)))


def _mapped(features: torch.Tensor, feature_map: Callable | None) -> torch.Tensor:
    with torch.no_grad():
        return features if feature_map is None else feature_map(features)


def accuracies(pred: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """(N, n_images) predictions -> N accuracies in percent."""
    return (100.0 * (pred == labels[None]).double().mean(1)).tolist()
