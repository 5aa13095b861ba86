"""Stitching: a victim's features mapped onto the clean base's at the splice point, so that layers fitted to
the clean trunk (generated, or the base's own) run on a victim that shares no features with it.

A stitch is a 1x1 convolution: one affine map over channels, applied at every pixel (on flat features, an
affine map). It is fitted by ridge least squares from the victim's activations at the input of the first
stage that holds a spliced layer to the base's activations there, on clean images only (the clean budget);
a few epochs of cross-entropy through the base's frozen tail may refine it. The stitched target is the
victim's trunk, then the stitch, then the base's tail: the spliced layers were fitted with the base's
values around them (bn3's running statistics in the default task).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pdiff.core.params import Layout
from pdiff.core.runtime import optimizer_step
from pdiff.core.settings import BN_IMAGES, StitchSettings
from pdiff.core.splice import select_layers
from pdiff.data.datasets import Split
from pdiff.measure.engine import FeatureMap, TargetEngine
from pdiff.measure.sources import names
from pdiff.measure.targets import Target
from pdiff.models.archs import StagedNet
from pdiff.models.loading import check_architecture
from pdiff.models.staged import accuracy, predict, stitch_point

STITCHED = names("stitch")  # the methods that run after a stitch
RIDGE = 1e-5  # relative to each victim channel's variance: a dead channel gets weight 0, not NaN
# `shrink`: a second penalty, the same for every channel (times their mean variance), so channels nearly dormant
# on clean data get small weights, as fine-pruning would prune them. "auto" takes the largest on SHRINK_GRID
# whose clean-budget accuracy (the stitched base, its own layers) is within SHRINK_MAX_DROP points of shrink 0's
SHRINK_GRID = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
SHRINK_MAX_DROP = 1.0
TUNE_LR, TUNE_BATCH = 1e-3, 128   # the cross-entropy refinement's Adam rate and batch


@dataclass
class Stitch:
    weight: torch.Tensor  # (C_out, C_in)
    bias: torch.Tensor    # (C_out,)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C_in, *spatial) -> (N, C_out, *spatial): the same affine map at every position."""
        y = torch.einsum("oc,nc...->no...", self.weight.to(x), x)
        return y + self.bias.to(x).view(1, -1, *([1] * (x.dim() - 2)))


class StitchLayer(nn.Module):
    """A Stitch as a module with trainable weight and bias (the revival attack fine-tunes it with the rest)."""

    def __init__(self, stitch: Stitch):
        super().__init__()
        self.weight, self.bias = nn.Parameter(stitch.weight.clone()), nn.Parameter(stitch.bias.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return Stitch(self.weight, self.bias)(x)


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> (N * positions, C): every position is one sample of the channel map."""
    return x.movedim(1, -1).reshape(-1, x.shape[1])


def fit_stitch(source: torch.Tensor, target: torch.Tensor, ridge: float = RIDGE, shrink: float = 0.0) -> Stitch:
    """The affine map over channels that best takes `source` features to `target` features (ridge least
    squares in float64, bias unpenalised); both (N, C, *spatial) of the same images and spatial size.
    `shrink`: an extra penalty, shrink times the mean channel variance, on every channel alike."""
    if source.shape[:1] + source.shape[2:] != target.shape[:1] + target.shape[2:] or source.dim() < 2:
        raise ValueError(f"cannot stitch features of shape {tuple(source.shape)} to {tuple(target.shape)}: "
                         "a 1x1 stitch needs the same images and the same spatial size on both sides")
    x, y = _pixels(source).double(), _pixels(target).double()
    mx, my = x.mean(0), y.mean(0)
    xc = x - mx
    gram = xc.T @ xc
    # each channel's penalty in proportion to its own variance: the fit does not depend on channel scales
    penalty = ridge * torch.diag(gram.diagonal().clamp(min=1e-12))
    penalty += shrink * gram.diagonal().mean() * torch.eye(len(gram), dtype=gram.dtype)
    w = torch.linalg.solve(gram + penalty, xc.T @ (y - my)).T
    return Stitch(w.float(), (my - w @ mx).float())


def explained(stitch: Stitch, source: torch.Tensor, target: torch.Tensor) -> float:
    """R^2 of the stitch's output against the target features (1: a perfect map)."""
    y, pred = _pixels(target).double(), _pixels(stitch(source)).double()
    return 1.0 - ((y - pred) ** 2).sum().item() / ((y - y.mean(0)) ** 2).sum().clamp(min=1e-12).item()


@torch.no_grad()
def choose_shrink(source: torch.Tensor, target: torch.Tensor, base: StagedNet, start: int, labels: torch.Tensor,
                  grid: tuple[float, ...] = SHRINK_GRID, max_drop: float = SHRINK_MAX_DROP) -> tuple[float, dict]:
    """The largest shrink on `grid` whose stitch keeps the clean images' accuracy (through the base's own tail,
    from `start`) within `max_drop` points of the plain least-squares stitch's; clean data only. Returns (shrink,
    {shrink: accuracy} for every value tried)."""
    base.eval()
    labels = labels.to(source.device)
    accs = {shrink: accuracy(base(fit_stitch(source, target, shrink=shrink)(source), start), labels)
            for shrink in sorted(set(grid) | {0.0})}
    return max(s for s, a in accs.items() if a >= accs[0.0] - max_drop), accs


def tune_stitch(stitch: Stitch, tail: StagedNet, start: int, source: torch.Tensor, labels: torch.Tensor,
                generator: torch.Generator, epochs: int = 5) -> Stitch:
    """Cross-entropy through the frozen `tail` (stages from `start`, eval mode), from the least-squares stitch."""
    tail.eval().requires_grad_(False)
    w, b = stitch.weight.clone().requires_grad_(True), stitch.bias.clone().requires_grad_(True)
    opt = torch.optim.Adam([w, b], lr=TUNE_LR)
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for i in range(0, len(order), TUNE_BATCH):
            idx = order[i:i + TUNE_BATCH]
            loss = F.cross_entropy(tail(Stitch(w, b)(source[idx]), start), labels[idx].to(source.device))
            optimizer_step(loss, opt)
    return Stitch(w.detach(), b.detach())


def hybrid_state(model: StagedNet, trunk: dict[str, torch.Tensor], tail: dict[str, torch.Tensor],
                 start: int) -> dict[str, torch.Tensor]:
    """Every value of stages before `start` from `trunk`, the rest from `tail`."""
    return {k: (trunk if model.stage_of(k) < start else tail)[k] for k in tail}


def splice_stage(model: StagedNet, layout: Layout, layers: list[str] | None = None) -> int:
    """The first stage of `model` that holds a spliced layer: where the stitch goes."""
    return stitch_point(model, select_layers(layout, layers))


def fit_for(trunk: StagedNet, base: StagedNet, start: int, budget: Split, settings: StitchSettings,
            generator: torch.Generator | None = None, device="cpu") -> tuple[Stitch, dict]:
    """The stitch from `trunk`'s features to `base`'s at stage `start`, fitted on the budget's images
    (settings.shrink: a value, or "auto": choose_shrink on the budget); with settings.epochs, refined by
    cross-entropy through the base's tail. Returns (stitch, info)."""
    t0 = time.perf_counter()
    base = base.to(device)
    images = budget.normalized(device)
    source = predict(trunk.to(device), images, 0, start)
    target = predict(base, images, 0, start)
    info = {"images": len(budget.labels), "stage": start}
    shrink = settings.shrink
    if shrink == "auto":
        shrink, tried = choose_shrink(source, target, base, start, budget.labels)
        info["shrink_budget_acc"] = {str(k): v for k, v in tried.items()}
    stitch = fit_stitch(source, target, shrink=float(shrink))
    info.update(shrink=float(shrink), r2=explained(stitch, source, target), tune_epochs=0)
    if settings.epochs:
        stitch = tune_stitch(stitch, base, start, source, budget.labels,
                             generator or torch.Generator().manual_seed(0), settings.epochs)
        info.update(tune_epochs=settings.epochs, r2_tuned=explained(stitch, source, target))
    info["seconds"] = time.perf_counter() - t0
    return stitch, info


def stitched_engine(engine: TargetEngine, base_state: dict, budget: Split, settings: StitchSettings = StitchSettings(),
                    generator: torch.Generator | None = None,
                    tail_state: dict | None = None) -> tuple[TargetEngine, dict]:
    """An engine on `engine`'s target stitched onto the clean model `base_state` (the target's trunk, the stitch,
    the base's tail, or `tail_state`'s: the target's own tail separates the stitch from the clean tail), judged
    against the target as it is (DER). BatchNorm statistics in the layout after the splice point are re-estimated per
    set on the budget's first BN_IMAGES images, through the stitch. Returns (engine, the stitch's info)."""
    task, target = engine.task, engine.target
    model = check_architecture(task, base_state)
    start = stitch_point(model, engine.layers)
    stitch, info = fit_for(engine.clean.model, model, start, budget, settings, generator, engine.device)
    tail = base_state if tail_state is None else tail_state
    hybrid = Target(f"{target.name} stitched", hybrid_state(model, target.state, tail, start), target.trigger)
    stitched = TargetEngine(task, engine.layout, hybrid, engine.test, engine.layers, engine.device,
                            budget.subset(BN_IMAGES), FeatureMap(stitch, engine.as_is()))
    return stitched, {**info, "bn_images": len(stitched.bn.features) if stitched.bn else 0}
