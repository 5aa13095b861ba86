"""Baseline parameter sets to set beside generated ones: is the generator more than a copier?

Zeng et al. 2025 find weight generators mostly return near-copies or interpolations of their
training checkpoints, so every report shows those too, evaluated by the same engine.
"""
from __future__ import annotations

import torch
from torch import nn

from pdiff.collect import collect_checkpoints
from pdiff.config import Task
from pdiff.data import Split
from pdiff.params import Layout, flatten, per_tensor
from pdiff.runtime import seeded_from
from pdiff.targets import check_architecture

NOISE_SIGMAS = (0.01, 0.05, 0.15)  # in units of each tensor's std over the K originals
DEFENCES = ("finetune", "reinit")


def noisy_originals(originals: torch.Tensor, tensor_std: torch.Tensor, layout: Layout, sigma: float, count: int,
                    generator: torch.Generator) -> torch.Tensor:
    """Random originals plus Gaussian noise of `sigma` times each tensor's std."""
    idx = torch.randint(0, len(originals), (count,), generator=generator)
    noise = torch.randn(count, originals.shape[1], generator=generator)
    return originals[idx] + sigma * noise * per_tensor(tensor_std, layout)


def interpolations(originals: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """Points on the segments between random pairs of distinct originals, mixing weight uniform in [0, 1]."""
    k = len(originals)
    i = torch.randint(0, k, (count,), generator=generator)
    j = (i + torch.randint(1, max(2, k), (count,), generator=generator)) % k  # never the same checkpoint twice
    w = torch.rand(count, 1, generator=generator)
    return (1 - w) * originals[i] + w * originals[j]


def baseline_sets(originals: torch.Tensor, tensor_std: torch.Tensor, layout: Layout, count: int,
                  generator: torch.Generator) -> dict[str, torch.Tensor]:
    sets = {f"noise_{s:g}": noisy_originals(originals, tensor_std, layout, s, count, generator) for s in NOISE_SIGMAS}
    sets["interpolation"] = interpolations(originals, count, generator)
    return sets


def _reinit_(model: nn.Module, names: list[str], generator: torch.Generator) -> None:
    """Fresh values for the named parameters only; BatchNorm running statistics stay the victim's."""
    owners = {n.rsplit(".", 1)[0] for n in names}
    with seeded_from(generator), torch.no_grad():
        for owner in sorted(owners):
            module = model.get_submodule(owner)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.weight.fill_(1.0)   # reset_parameters() would also reset the running statistics
                module.bias.zero_()
            else:
                module.reset_parameters()


def defence_sets(task: Task, layout: Layout, victim_state: dict[str, torch.Tensor], train: Split, test: Split,
                 generator: torch.Generator, k: int, device="cpu", names: tuple[str, ...] | list[str] = DEFENCES
                 ) -> dict[str, torch.Tensor]:
    """The classic defences a generator must beat, K parameter sets each, collected along one training run
    (the collection's recipe and step budget, trunk and BN frozen) on clean training data:
    finetune trains the victim's own train_layer, reinit the same layers re-initialised first."""
    out = {}
    for name in names:
        model = check_architecture(task, victim_state)
        if name == "reinit":
            _reinit_(model, [n for n, _ in layout], generator)
        params, _ = collect_checkpoints(model, task, train, test, generator, k=k, device=device)
        out[name] = flatten(params, layout).float()
    return out
