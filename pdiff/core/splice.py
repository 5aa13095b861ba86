"""Put generated vectors into a target model by parameter name, shapes checked."""
from __future__ import annotations

import torch

from pdiff.core.params import Layout, unflatten


ALL_LAYERS = "all"  # the default of the CLI's --layers and of the app's layer box: every layer of the bundle


def select_layers(layout: Layout, layers: list[str] | None) -> list[str]:
    """The names to splice: all of the layout's (None, [] or ["all"]), or a subset of it, in layout order."""
    names = [n for n, _ in layout]
    if not layers or ALL_LAYERS in layers:
        return names
    unknown = [n for n in layers if n not in names]
    if unknown:
        raise ValueError(f"layers not in the bundle's train_layer: {', '.join(unknown)}; "
                         f"the bundle has: {', '.join(names)}")
    return [n for n in names if n in set(layers)]


def check_target(state: dict[str, torch.Tensor], layout: Layout, layers: list[str] | None = None) -> None:
    """Raise ValueError naming every selected layer the target lacks or has in another shape."""
    wanted = dict(layout)
    problems = []
    for name in select_layers(layout, layers):
        if name not in state:
            problems.append(f"{name} (missing in target)")
        elif tuple(state[name].shape) != tuple(wanted[name]):
            problems.append(f"{name} (target {tuple(state[name].shape)}, bundle {tuple(wanted[name])})")
    if problems:
        raise ValueError("the target does not fit the bundle's layers: " + "; ".join(problems))


def stacked_params(vectors: torch.Tensor, layout: Layout, state: dict[str, torch.Tensor],
                   layers: list[str] | None = None) -> dict[str, torch.Tensor]:
    """(N, P) vectors -> {name: (N, *shape)} for the selected layers; the target keeps the rest."""
    check_target(state, layout, layers)
    finite = torch.isfinite(vectors).all(dim=1)
    if not bool(finite.all()):
        raise ValueError(f"{int((~finite).sum())} vectors have non-finite values; drop them first")
    by_name = unflatten(vectors, layout)
    return {n: by_name[n].to(state[n].dtype) for n in select_layers(layout, layers)}


def splice(state: dict[str, torch.Tensor], vector: torch.Tensor, layout: Layout,
           layers: list[str] | None = None) -> dict[str, torch.Tensor]:
    """A copy of `state` with one vector (P,) spliced into the selected layers."""
    new = {k: v.clone() for k, v in state.items()}
    for name, value in stacked_params(vector[None], layout, state, layers).items():
        new[name] = value[0]
    return new
