"""The field's defences on a backdoored victim, at a stated clean-data budget (BackdoorBench's set-up).

Layer defences change only the spliced layers and yield layout vectors, measured by the engine like any
parameter set: `finetune` trains the victim's own train_layer on the budget (the collection's recipe and
step budget, trunk and BatchNorm frozen); `reinit` re-initialises the same layers first, with the running
statistics of every BatchNorm after a re-initialised layer re-estimated on the budget. A run records K
checkpoints; the defence is the last one, their mean a labelled run-mean.

Whole-model defences yield state dicts, measured by `TargetEngine.measure_state`: `ft` fine-tunes the
whole victim on the budget (BackdoorBench's FT); `fp` prunes the last convolution's channels that stay
dormant on the budget, then fine-tunes with them held at zero (fine-pruning, Liu et al. 2018); `fst` re-initialises
the head and tunes everything while pushing the head away from the victim's (feature shift tuning, Min et al.,
NeurIPS 2023: the strongest fine-tuning defence on the budget alone); `clp` prunes channels whose Lipschitz upper bound
stands out, with no data at all (Zheng et al., ECCV 2022); `anp` prunes the BatchNorm neurons that adversarial noise
shows the clean loss does not need (Wu & Wang, NeurIPS 2021), as many as the budget accuracy allows.

Where this differs from BackdoorBench (PreAct-ResNet-18 on CIFAR-10): FT and FP fine-tune for EPOCHS = 10
epochs, not 100 (this CPU takes about 11 s per epoch of 3,000 Fashion-MNIST images; 10 epochs are 240
steps of 128), at batch 128 (its yaml: 256); FP decides how far to prune on the budget's accuracy, not on
the test set's; ANP prunes by the same budget-accuracy rule by default, where BackdoorBench sweeps thresholds and
picks with data a defender does not hold; FST's cosine decay runs per step, not per epoch; the random horizontal flip
is the only augmentation (every model here trains with it).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils import prune
from tqdm.auto import tqdm

from pdiff.collection.collect import collect_checkpoints
from pdiff.core.config import Task
from pdiff.core.params import Layout, flatten
from pdiff.core.runtime import seeded_from
from pdiff.core.settings import DefenceSettings
from pdiff.data.datasets import Split
from pdiff.data.plan import BATCH
from pdiff.measure.sources import names, source
from pdiff.models.archs import StagedNet
from pdiff.models.fit import Objective, Schedule, fit
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
# ANP (Wu & Wang, NeurIPS 2021) with BackdoorBench's defaults: neuron noise drawn in +-0.4, one noise step, the
# clean loss weighted 0.2, 2,000 mask steps of batch 128 (SGD lr 0.2, momentum 0.9); iterations and the pruning rule:
# DefenceSettings (by default the budget-accuracy rule of prune_by_mask, not a fixed threshold)
ANP_EPS, ANP_STEPS, ANP_ALPHA, ANP_LR = 0.4, 1, 0.2, 0.2
FST_ALPHA, FST_LR = 0.2, 0.01  # FST (Min et al., NeurIPS 2023): the authors' CIFAR-10 defaults


def hyper_parameters(settings: DefenceSettings) -> dict:
    """The defences' hyper-parameters, as a report records them."""
    return {"epochs": settings.epochs, "k": settings.k, "lr": LR, "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY,
            "batch": BATCH, "fp_acc_ratio": FP_ACC_RATIO, "fp_step": FP_STEP, "fp_max_ratio": FP_MAX_RATIO,
            "clp_u": CLP_U, "fst": {"alpha": FST_ALPHA, "lr": FST_LR, "weight_decay": 0.0, "epochs": settings.epochs},
            "anp": {"eps": ANP_EPS, "steps": ANP_STEPS, "alpha": ANP_ALPHA, "iterations": settings.anp_iterations,
                    "mask_lr": ANP_LR, "noise_clamp": None, "prune_rule": anp_rule(settings)}}


def anp_rule(settings: DefenceSettings) -> dict:
    """ANP's pruning rule as the report names it."""
    if settings.anp_threshold is not None:
        return {"name": "threshold", "threshold": settings.anp_threshold}
    return {"name": "budget-accuracy", "acc_ratio": FP_ACC_RATIO, "max_ratio": FP_MAX_RATIO,
            "says": "prune neurons in increasing order of their mask while the budget accuracy stays within acc_ratio "
                    "of the unpruned model's (fine-pruning's rule)"}


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


class DefenceFailed(ValueError):
    """A defence that ran but cannot give a model (a mask gone NaN, a rule that would prune every neuron): the run
    goes on with the defence marked, its one-line reason in the report."""


def _noisy_forward(bn: _BatchNorm, mask: torch.Tensor, noise_w: torch.Tensor, noise_b: torch.Tensor, state: dict):
    """ANP's NoisyBatchNorm as a forward for one BatchNorm: the weight times (mask + noise) and the bias times
    (1 + noise) while perturbed, the weight times the mask otherwise; batch statistics, as in ANP's mask training (the
    model's running statistics are never read or changed)."""
    weight, bias = bn.weight.detach(), bn.bias.detach()

    def forward(x: torch.Tensor) -> torch.Tensor:
        noisy = state["noisy"]
        w = weight * (mask + noise_w if noisy else mask)
        b = bias * (1 + noise_b) if noisy else bias
        return torch.nn.functional.batch_norm(x, None, None, w, b, True, 0.0, bn.eps)
    return forward


def anp_masks(model: StagedNet, budget: Split, generator: torch.Generator, iterations: int,
              device, channels_last: bool = True) -> dict[str, torch.Tensor]:
    """ANP's mask training (Wu & Wang, NeurIPS 2021) as BackdoorBench runs it: a mask on every BatchNorm neuron, learnt
    on the budget (batches of BATCH, SGD lr ANP_LR, momentum 0.9, the mask clipped to [0, 1]) to keep the clean loss low
    under adversarial multiplicative noise on the neurons: a fresh uniform start in [-ANP_EPS, ANP_EPS], then ANP_STEPS
    signed ascent steps of ANP_EPS / ANP_STEPS, with no clamp after them (BackdoorBench has none). The loss weighs the
    clean loss ANP_ALPHA and the perturbed one 1 - ANP_ALPHA. Returns {BatchNorm name: mask}. The convolutions run
    channels-last: 1.4x faster forward and backward on a CPU for these small images (bench/anp.py)."""
    model = model.to(device).eval().requires_grad_(False)
    x_all, y_all = budget.normalized(device), budget.labels.to(device)
    if channels_last and x_all.dim() == 4:
        model, x_all = model.to(memory_format=torch.channels_last), x_all.contiguous(memory_format=torch.channels_last)
    bns = {name: m for name, m in model.named_modules() if isinstance(m, _BatchNorm)}
    masks = {name: torch.ones(len(m.weight), device=device, requires_grad=True) for name, m in bns.items()}
    noises = {name: (torch.zeros_like(masks[name], requires_grad=True), torch.zeros_like(masks[name], requires_grad=True))
              for name in bns}
    state = {"noisy": False}
    for name, m in bns.items():  # an instance attribute shadows the class's forward until it is deleted
        m.forward = _noisy_forward(m, masks[name], *noises[name], state)
    mask_opt = torch.optim.SGD(list(masks.values()), lr=ANP_LR, momentum=0.9)
    noise_list = [t for pair in noises.values() for t in pair]
    noise_opt = torch.optim.SGD(noise_list, lr=ANP_EPS / ANP_STEPS)
    try:
        for _ in tqdm(range(iterations), desc="anp mask", unit="step", leave=False):
            idx = torch.randint(0, len(y_all), (BATCH,), generator=generator)
            x, y = x_all[idx], y_all[idx]
            with torch.no_grad():  # a fresh random start of the noise
                for t in noise_list:
                    t.uniform_(-ANP_EPS, ANP_EPS, generator=generator)
            state["noisy"] = True
            for _ in range(ANP_STEPS):  # signed ascent on the clean loss
                noise_opt.zero_grad()
                (-F.cross_entropy(model(x), y)).backward()
                for t in noise_list:
                    t.grad = t.grad.sign()
                noise_opt.step()
            robust = F.cross_entropy(model(x), y)
            state["noisy"] = False
            natural = F.cross_entropy(model(x), y)
            mask_opt.zero_grad()
            (ANP_ALPHA * natural + (1 - ANP_ALPHA) * robust).backward()
            mask_opt.step()
            with torch.no_grad():
                for m in masks.values():
                    m.clamp_(0.0, 1.0)
    finally:
        for m in bns.values():
            del m.forward
        model.to(memory_format=torch.contiguous_format).requires_grad_(True)
    out = {name: m.detach() for name, m in masks.items()}
    if any(not torch.isfinite(m).all() for m in out.values()):
        raise DefenceFailed(f"anp: the mask did not converge (NaN after {iterations} steps); no neuron pruned")
    return out


@torch.no_grad()
def prune_by_mask(model: StagedNet, masks: dict[str, torch.Tensor], budget: Split, threshold: float | None,
                  device) -> tuple[list[tuple[str, int]], dict]:
    """Prune BatchNorm neurons (weight set to zero) in increasing order of their ANP mask. The default rule uses the
    clean budget alone, as fine-pruning does: prune one neuron at a time while the budget accuracy stays within
    FP_ACC_RATIO of the unpruned model's, at most FP_MAX_RATIO of the neurons. With `threshold`: every neuron whose
    mask is below it (ANP's fixed rule; BackdoorBench sweeps it and picks with data a defender lacks). Returns the
    pruned (BatchNorm, neuron) pairs in order and the rule with what it saw."""
    order = sorted(((v.item(), name, i) for name, m in masks.items() for i, v in enumerate(m)))
    total = len(order)
    model.to(device).eval()
    x, labels = budget.normalized(device), budget.labels.to(device)
    before = accuracy(predict(model, x), labels)
    if threshold is not None:
        pruned = [(name, i) for v, name, i in order if v < threshold]
        if len(pruned) == total:
            raise DefenceFailed(f"anp: threshold {threshold} would prune all {total} neurons; no neuron pruned")
        rule = {"name": "threshold", "threshold": threshold}
    else:
        pruned, after = [], before
        for _, name, i in order[:int(total * FP_MAX_RATIO)]:
            bn = model.get_submodule(name)
            kept = bn.weight[i].item()
            bn.weight[i] = 0.0
            acc = accuracy(predict(model, x), labels)
            if (before - acc) / before > FP_ACC_RATIO:
                bn.weight[i] = kept  # this one would cost too much: stop before it
                break
            pruned.append((name, i))
            after = acc
        rule = {"name": "budget-accuracy", "acc_ratio": FP_ACC_RATIO, "max_ratio": FP_MAX_RATIO,
                "budget_acc_before": before, "budget_acc_pruned": after}
    for name, i in pruned:
        model.get_submodule(name).weight[i] = 0.0
    return pruned, rule


def anp(model: StagedNet, budget: Split, generator: torch.Generator, settings: DefenceSettings,
        device) -> tuple[StagedNet, dict]:
    """Adversarial Neuron Pruning (Wu & Wang, NeurIPS 2021): `anp_masks`, then `prune_by_mask` with the settings'
    rule. Chosen beside ft, fp, fst and clp because it acts on the BatchNorm neurons every architecture here has, needs
    only the clean budget and has published defaults; i-BAU's implicit hypergradient costs more on a CPU."""
    masks = anp_masks(model, budget, generator, settings.anp_iterations, device)
    pruned, rule = prune_by_mask(model, masks, budget, settings.anp_threshold, device)
    by_layer = {name: sorted(i for n, i in pruned if n == name) for name in masks}
    return model, {"pruned_neurons": by_layer, "pruned": len(pruned), "neurons": sum(len(m) for m in masks.values()),
                   "iterations": settings.anp_iterations, "prune_rule": rule,
                   "mask_mean": torch.cat(list(masks.values())).mean().item()}


def fst(model: StagedNet, budget: Split, generator: torch.Generator, settings: DefenceSettings,
        device) -> tuple[StagedNet, dict]:
    """Feature Shift Tuning (Min et al., NeurIPS 2023), as its authors' code runs it: the linear head re-initialised
    (uniform in +-1/sqrt(fan-in)), then every layer tuned on the budget (SGD lr FST_LR, momentum 0.9, no weight decay)
    on the cross-entropy plus FST_ALPHA <W, W_original>, which pushes the new head away from the backdoored one; after
    every step the head's weight is scaled back to the original's norm. Its defaults (10 epochs, lr 0.01, alpha 0.2 on
    2 % of CIFAR-10) fit this budget as they are: 10 epochs of the 3,000 images, like ft here."""
    head = model.stages()[-1][1]
    if not isinstance(head, nn.Linear):
        raise ValueError(f"fst needs a linear head as the last stage, found {type(head).__name__}")
    original, norm = head.weight.detach().clone(), head.weight.detach().norm()
    bound = 1 / math.sqrt(head.weight.shape[1])
    with torch.no_grad():
        head.weight.uniform_(-bound, bound, generator=generator)
        head.bias.uniform_(-bound, bound, generator=generator)

    def rescale() -> None:
        with torch.no_grad():
            head.weight.mul_(norm / head.weight.norm())
    objective = Objective(penalty=lambda: FST_ALPHA * (head.weight * original).sum(), after_step=rescale)
    fit(model, budget, Schedule(settings.epochs, FST_LR, BATCH, 0.0, MOMENTUM), generator, device, "fst",
        objective=objective)
    return model, {"epochs": settings.epochs, "alpha": FST_ALPHA, "lr": FST_LR,
                   "head_cosine_to_original": F.cosine_similarity(head.weight.detach().flatten(), original.flatten(),
                                                                  dim=0).item()}


def _ft(model: StagedNet, budget: Split, generator: torch.Generator, settings: DefenceSettings,
        device) -> tuple[StagedNet, dict]:
    return fine_tune(model, budget, generator, settings.epochs, device), {"epochs": settings.epochs}


def _fp(model: StagedNet, budget: Split, generator: torch.Generator, settings: DefenceSettings,
        device) -> tuple[StagedNet, dict]:
    return fine_prune(model, budget, generator, settings.epochs, device)


def _clp(model: StagedNet, budget: Split | None, generator, settings, device) -> tuple[StagedNet, dict]:
    return clp(model)


# name -> fn(model, budget, generator, settings, device) -> (defended model, what it did)
_MODEL_DEFENCE = {"ft": _ft, "fp": _fp, "fst": fst, "clp": _clp, "anp": anp}


def model_defence(name: str, task: Task, victim_state: dict[str, torch.Tensor], budget: Split | None,
                  generator: torch.Generator, settings: DefenceSettings = DefenceSettings(),
                  device="cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """One whole-model defence on a fresh copy of the victim: (its state dict on the CPU, what it did)."""
    if name not in _MODEL_DEFENCE:
        raise ValueError(f"unknown model defence {name!r}; known: {', '.join(MODEL_DEFENCES)}")
    if source(name).budget and budget is None:
        raise ValueError(f"the {name} defence trains on clean data; give a clean budget")
    model, info = _MODEL_DEFENCE[name](check_architecture(task, victim_state), budget, generator, settings, device)
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, info


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
