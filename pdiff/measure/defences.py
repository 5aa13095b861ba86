"""The field's defences on a backdoored victim, at a stated clean-data budget (BackdoorBench's set-up).

Layer defences change only the spliced layers and yield layout vectors, measured by the engine like any
parameter set: `finetune` trains the victim's own train_layer on the budget (the collection's recipe and
step budget, trunk and BatchNorm frozen); `reinit` re-initialises the same layers first, with the running
statistics of every BatchNorm after a re-initialised layer re-estimated on the budget. A run records K
checkpoints; the defence is the last one, their mean a labelled run-mean.

Whole-model defences yield state dicts, measured by `TargetEngine.measure_state`: `ft` fine-tunes the
whole victim on the budget (BackdoorBench's FT); `fp` prunes the last convolution's channels that stay
dormant on the budget, then fine-tunes with them held at zero (fine-pruning, Liu et al. 2018); `clp`
prunes channels whose Lipschitz upper bound stands out, with no data at all (Zheng et al., ECCV 2022); `anp` prunes the
BatchNorm neurons that adversarial noise shows the clean loss does not need (Wu & Wang, NeurIPS 2021).

Where this differs from BackdoorBench (PreAct-ResNet-18 on CIFAR-10): FT and FP fine-tune for EPOCHS = 10
epochs, not 100 (this CPU takes about 11 s per epoch of 3,000 Fashion-MNIST images; 10 epochs are 240
steps of 128), at batch 128 (its yaml: 256); FP decides how far to prune on the budget's accuracy, not on
the test set's; the random horizontal flip is the only augmentation (every model here trains with it).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import prune

from pdiff.collection.collect import collect_checkpoints
from pdiff.core.config import Task
from pdiff.core.params import Layout, flatten
from pdiff.core.runtime import seeded_from
from pdiff.core.settings import DefenceSettings
from pdiff.data.datasets import Split
from pdiff.data.plan import BATCH
from pdiff.measure.sources import names, source
from pdiff.models.archs import StagedNet
from pdiff.models.fit import Schedule, fit
from pdiff.models.loading import check_architecture
from pdiff.models.staged import accuracy, predict

LAYER_DEFENCES = names("defence", "layers")   # the spliced layers only: layout vectors
MODEL_DEFENCES = names("defence", "whole")    # the whole victim: state dicts
DEFENCES = LAYER_DEFENCES + MODEL_DEFENCES
LR, MOMENTUM, WEIGHT_DECAY = 0.01, 0.9, 5e-4   # BackdoorBench FT / FP: SGD, cosine decay, batch BATCH (128)
FP_ACC_RATIO = 0.1         # stop pruning once budget accuracy falls by this share of itself (BackdoorBench acc_ratio)
FP_STEP = 0.01             # share of the channels pruned per step (BackdoorBench once_prune_ratio)
FP_MAX_RATIO = 0.9         # never prune more than this share of the channels
CLP_U = 3.0                # prune channels whose bound exceeds mean + u * std in their layer (the paper's default)
# ANP (Wu & Wang, NeurIPS 2021) with BackdoorBench's defaults: neuron noise of at most 0.4, one noise step, the
# clean loss weighted 0.2, 2,000 mask steps of batch 128 (SGD lr 0.2, momentum 0.9), pruned below a mask of 0.2
ANP_EPS, ANP_STEPS, ANP_ALPHA, ANP_LR, ANP_THRESHOLD = 0.4, 1, 0.2, 0.2, 0.2  # iterations: DefenceSettings


def hyper_parameters(settings: DefenceSettings) -> dict:
    """The defences' hyper-parameters, as a report records them."""
    return {"epochs": settings.epochs, "k": settings.k, "lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY,
            "batch": BATCH, "fp_acc_ratio": FP_ACC_RATIO, "fp_step": FP_STEP, "fp_max_ratio": FP_MAX_RATIO,
            "clp_u": CLP_U, "anp": {"eps": ANP_EPS, "steps": ANP_STEPS, "alpha": ANP_ALPHA,
                                    "iterations": settings.anp_iterations, "mask_lr": ANP_LR, "threshold": ANP_THRESHOLD}}


# ---- the spliced layers ------------------------------------------------------------------
def reinit_(model: nn.Module, names: list[str], generator: torch.Generator) -> None:
    """Fresh values for the named parameters only; running statistics stay the victim's (see `layer_defence`)."""
    owners = {n.rsplit(".", 1)[0] for n in names}
    with seeded_from(generator), torch.no_grad():
        for owner in sorted(owners):
            module = model.get_submodule(owner)
            if isinstance(module, _BatchNorm):
                module.weight.fill_(1.0)   # reset_parameters() would also reset the running statistics
                module.bias.zero_()
            else:
                module.reset_parameters()


def batchnorms_after(model: nn.Module, names: list[str]) -> list[str]:
    """The BatchNorms whose input changes when the named parameters do: every one after the first named
    layer that is not itself a BatchNorm (module order follows the data flow in these architectures)."""
    owners = {n.rsplit(".", 1)[0] for n in names}
    seen, out = False, []
    for name, module in model.named_modules():
        seen = seen or (name in owners and not isinstance(module, _BatchNorm))
        if seen and isinstance(module, _BatchNorm):
            out.append(name)
    return out


@torch.no_grad()
def reestimate_bn(model: StagedNet, images: Split, owners: list[str], device="cpu", batch: int = 512) -> StagedNet:
    """Running statistics of the named BatchNorms re-estimated by a train-mode pass over `images` (cumulative
    average over the batches); every other module stays in eval mode and unchanged."""
    model.to(device).eval()
    modules = [model.get_submodule(o) for o in owners]
    momenta = [m.momentum for m in modules]
    for m in modules:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    x = images.normalized(device)
    for i in range(0, len(x), batch):
        model(x[i:i + batch])
    for m, momentum in zip(modules, momenta):
        m.momentum = momentum
    return model.eval()


def layer_defence(name: str, task: Task, layout: Layout, victim_state: dict[str, torch.Tensor], budget: Split,
                  generator: torch.Generator, k: int, device="cpu") -> torch.Tensor:
    """(K, P): the checkpoints along one `finetune` or `reinit` run on the budget; the last is the defence."""
    if name not in LAYER_DEFENCES:
        raise ValueError(f"unknown layer defence {name!r}; known: {', '.join(LAYER_DEFENCES)}")
    model = check_architecture(task, victim_state)
    names = [n for n, _ in layout]
    if name == "reinit":
        reinit_(model, names, generator)
        # a re-initialised convolution feeds its BatchNorm other statistics than the victim's
        reestimate_bn(model, budget, batchnorms_after(model, names), device)
    # accuracies come back on the budget itself (cheap); the engine measures the vectors on the test split
    params, _ = collect_checkpoints(model, task, budget, budget, generator, k=k, device=device)
    return flatten(params, layout).float()


# ---- the whole victim --------------------------------------------------------------------
def fine_tune(model: StagedNet, budget: Split, generator: torch.Generator, epochs: int, device="cpu",
              desc: str = "ft") -> StagedNet:
    """BackdoorBench's FT: every layer trained on the budget, SGD (lr 0.01, momentum 0.9, weight decay 5e-4),
    cosine decay, batch 128; BatchNorm statistics update as in any training."""
    return fit(model, budget, Schedule(epochs, LR, BATCH, WEIGHT_DECAY, MOMENTUM), generator, device, desc)


def fine_prune(model: StagedNet, budget: Split, generator: torch.Generator, epochs: int,
               device="cpu") -> tuple[StagedNet, dict]:
    """Fine-pruning as BackdoorBench runs it: the last convolution's channels (the linear head's inputs,
    after their BatchNorm, ReLU and pooling) sorted by mean activation on the budget, pruned from the
    quietest up while budget accuracy stays within FP_ACC_RATIO of the unpruned model's; then fine-tuned
    like `ft` with the pruned channels' head columns masked at zero throughout."""
    head = model.stages()[-1][1]
    if not isinstance(head, nn.Linear):
        raise ValueError(f"fine-pruning needs a linear head as the last stage, found {type(head).__name__}")
    with torch.no_grad():
        feats = predict(model.to(device), budget.normalized(device), 0, len(model.stages()) - 1)  # n, C
        order = feats.mean(0).argsort()
        labels, channels = budget.labels.to(device), feats.shape[1]

        def masked_accuracy(mask: torch.Tensor) -> float:  # the head on the cached features, channels masked
            return accuracy((feats * mask) @ head.weight.T + head.bias, labels)

        before = masked_accuracy(torch.ones(channels, device=device))
        pruned, after = 0, before
        step = math.ceil(channels * FP_STEP)
        for count in range(step, int(channels * FP_MAX_RATIO) + 1, step):
            mask = torch.ones(channels, device=device)
            mask[order[:count]] = 0
            acc = masked_accuracy(mask)
            if (before - acc) / before >= FP_ACC_RATIO:
                break
            pruned, after = count, acc
    mask = torch.ones_like(head.weight)
    mask[:, order[:pruned]] = 0
    prune.custom_from_mask(head, "weight", mask)   # the forward pass multiplies by the mask: pruned stays zero
    fine_tune(model, budget, generator, epochs, device, desc="fp")
    prune.remove(head, "weight")                   # a plain state dict again, the masked columns zero
    return model, {"pruned_channels": sorted(order[:pruned].tolist()), "channels": channels,
                   "budget_acc_before": before, "budget_acc_pruned": after, "epochs": epochs}


@torch.no_grad()
def clp(model: StagedNet, u: float = CLP_U) -> tuple[StagedNet, dict]:
    """Channel Lipschitzness-based pruning: for each convolution followed by a BatchNorm, each channel's upper
    bound (the spectral norm of its kernel, (C_in, kh*kw), times |gamma| / sqrt(var + eps)); channels above
    mean + u * std within the layer get BatchNorm weight and bias zero, so they output nothing. No data."""
    conv, pruned = None, {}
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            conv = m
        elif isinstance(m, nn.BatchNorm2d) and conv is not None and conv.out_channels == m.num_features:
            bound = torch.linalg.matrix_norm(conv.weight.flatten(2), ord=2) * (
                m.weight / (m.running_var + m.eps).sqrt()).abs()
            idx = (bound > bound.mean() + u * bound.std()).nonzero().flatten()
            m.weight[idx], m.bias[idx] = 0.0, 0.0
            pruned[name] = idx.tolist()
            conv = None   # one BatchNorm per convolution
    return model, {"u": u, "pruned_channels": pruned}


class _NoisyNeurons:
    """ANP's view of one BatchNorm: a mask on each neuron's weight and adversarial multiplicative noise on its weight
    and bias, applied in a forward pre-hook-free way by swapping the module's affine parameters per call."""

    def __init__(self, bn: _BatchNorm):
        self.bn, self.weight, self.bias = bn, bn.weight.detach().clone(), bn.bias.detach().clone()
        c = len(self.weight)
        self.mask = torch.ones(c, requires_grad=True)
        self.noise_w, self.noise_b = torch.zeros(c, requires_grad=True), torch.zeros(c, requires_grad=True)

    def forward(self, x: torch.Tensor, noisy: bool) -> torch.Tensor:
        w = self.weight * (self.mask + self.noise_w if noisy else self.mask)
        b = self.bias * (1 + self.noise_b if noisy else 1)
        # batch statistics in the mask's training, as ANP's; the model's running statistics are never changed
        return torch.nn.functional.batch_norm(x, None, None, w, b, True, 0.0, self.bn.eps)


def anp(model: StagedNet, budget: Split, generator: torch.Generator, iterations: int, device) -> tuple[StagedNet, dict]:
    """Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021), as BackdoorBench runs it: a mask on every BatchNorm
    neuron, learnt on the budget to keep the clean loss low under adversarial noise on the neurons; the neurons whose
    mask ends below ANP_THRESHOLD are pruned (their BatchNorm weight set to zero) after `iterations` mask steps. Chosen beside ft, fp and clp because it acts on the BatchNorm neurons every architecture here has,
    needs only the clean budget and has published defaults; i-BAU's implicit hypergradient costs more on a CPU."""
    model = model.to(device).eval().requires_grad_(False)
    neurons = {name: _NoisyNeurons(m) for name, m in model.named_modules() if isinstance(m, _BatchNorm)}
    state = {"noisy": False}
    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: n.forward(inp[0], state["noisy"]))
             for n, m in ((neurons[name], model.get_submodule(name)) for name in neurons)]
    masks = [n.mask for n in neurons.values()]
    noises = [t for n in neurons.values() for t in (n.noise_w, n.noise_b)]
    mask_opt = torch.optim.SGD(masks, lr=ANP_LR, momentum=0.9)
    noise_opt = torch.optim.SGD(noises, lr=ANP_EPS / ANP_STEPS)
    x_all, y_all = budget.normalized(device), budget.labels.to(device)
    try:
        for _ in range(iterations):
            idx = torch.randint(0, len(y_all), (BATCH,), generator=generator)
            x, y = x_all[idx], y_all[idx]
            with torch.no_grad():  # a fresh random start of the noise, then ANP_STEPS signed ascent steps
                for t in noises:
                    t.uniform_(-ANP_EPS, ANP_EPS, generator=generator)
            state["noisy"] = True
            for _ in range(ANP_STEPS):
                noise_opt.zero_grad()
                (-torch.nn.functional.cross_entropy(model(x), y)).backward()
                for t in noises:
                    t.grad = t.grad.sign()
                noise_opt.step()
                with torch.no_grad():
                    for t in noises:
                        t.clamp_(-ANP_EPS, ANP_EPS)
            robust = torch.nn.functional.cross_entropy(model(x), y)
            state["noisy"] = False
            natural = torch.nn.functional.cross_entropy(model(x), y)
            mask_opt.zero_grad()
            (ANP_ALPHA * natural + (1 - ANP_ALPHA) * robust).backward()
            mask_opt.step()
            with torch.no_grad():
                for m in masks:
                    m.clamp_(0.0, 1.0)
    finally:
        for h in hooks:
            h.remove()
    pruned = {}
    with torch.no_grad():
        for name, n in neurons.items():
            idx = (n.mask < ANP_THRESHOLD).nonzero().flatten()
            n.bn.weight[idx] = 0.0
            pruned[name] = idx.tolist()
    model.requires_grad_(True)
    return model, {"pruned_neurons": pruned, "neurons": sum(len(m) for m in masks), "iterations": iterations,
                   "mask_mean": torch.cat([m.detach() for m in masks]).mean().item()}


def _ft(model: StagedNet, budget: Split, generator: torch.Generator, epochs: int, device) -> tuple[StagedNet, dict]:
    return fine_tune(model, budget, generator, epochs, device), {"epochs": epochs}


def _clp(model: StagedNet, budget: Split | None, generator, epochs, device) -> tuple[StagedNet, dict]:
    return clp(model)


# name -> fn(model, budget, generator, length, device) -> (defended model, what it did); the length is epochs of
# fine-tuning, or ANP's mask steps
_MODEL_DEFENCE = {"ft": _ft, "fp": fine_prune, "clp": _clp, "anp": anp}


def model_defence(name: str, task: Task, victim_state: dict[str, torch.Tensor], budget: Split | None,
                  generator: torch.Generator, settings: DefenceSettings = DefenceSettings(),
                  device="cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """One whole-model defence on a fresh copy of the victim: (its state dict on the CPU, what it did)."""
    if name not in _MODEL_DEFENCE:
        raise ValueError(f"unknown model defence {name!r}; known: {', '.join(MODEL_DEFENCES)}")
    if source(name).budget and budget is None:
        raise ValueError(f"the {name} defence trains on clean data; give a clean budget")
    length = settings.anp_iterations if name == "anp" else settings.epochs
    model, info = _MODEL_DEFENCE[name](check_architecture(task, victim_state), budget, generator, length, device)
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}, info


@dataclass
class Defended:
    """One defence's outcome. A layer defence: `vectors`, the (K, P) checkpoints along its run (the last is
    the defence). A whole-model defence: the defended `state` and `details` of what it did. Its wall time."""
    name: str
    seconds: float
    vectors: torch.Tensor | None = None
    state: dict[str, torch.Tensor] | None = None
    details: dict | None = None


def run_defence(name: str, task: Task, layout: Layout, victim_state: dict[str, torch.Tensor], budget: Split | None,
                generator: torch.Generator, settings: DefenceSettings, device="cpu") -> Defended:
    """Any defence in DEFENCES on the victim, timed: the one entry point `report` and `transfer` share.
    `settings.k`: the checkpoints along a layer defence's run (the caller resolves None to the bundle's K)."""
    t0 = time.perf_counter()
    if name in LAYER_DEFENCES:
        vectors = layer_defence(name, task, layout, victim_state, budget, generator, settings.k, device)
        return Defended(name, time.perf_counter() - t0, vectors=vectors)
    state, details = model_defence(name, task, victim_state, budget, generator, settings, device)
    return Defended(name, time.perf_counter() - t0, state=state, details=details)
