"""Collect K checkpoints of a trained model's train_layer on its frozen trunk (on one trunk or several).

Collection freezes the trunk and BatchNorm statistics, so every collected vector fits the
saved base model exactly. A StagedNet's frozen trunk output is the same at every step, so it is
computed once and the train_layer tail is trained on the cached features; any other module trains
its train_layer on the whole forward pass, everything else frozen.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from pdiff.collection.folder import Collection
from pdiff.core import dist
from pdiff.core.config import Recipe, Task
from pdiff.core.params import layout_of
from pdiff.core.runtime import optimizer_step, seeded_from
from pdiff.core.settings import CollectSpec
from pdiff.data.datasets import Split, random_flip
from pdiff.data.plan import RunData
from pdiff.models.fit import Augment, Schedule, fit, init_model, test_accuracy
from pdiff.models.loading import check_architecture
from pdiff.models.staged import BatchedEvaluator, accuracies, first_stage, tail_input, tail_kwargs


def collect_checkpoints(model: nn.Module, task: Task, train: Split, test: Split, generator: torch.Generator,
                        k: int | None = None, device: str = "cpu") -> tuple[dict[str, torch.Tensor], list[float]]:
    """Keep training only train_layer on the frozen trunk (BN statistics frozen too); save K times.

    BatchNorm statistics named in train_layer are saved with every checkpoint but never change:
    they are the trunk's, the ones the trained layers learned under. Accuracies are measured on
    the values as stored (after rounding to the recipe's storage_dtype). Returns ({name: (K, *shape)}, accs).
    """
    recipe = task.recipe
    k = recipe.k if k is None else k
    dtype = storage_dtype(recipe)
    model.to(device).eval()  # eval mode: every BatchNorm keeps the base model's running statistics
    start = first_stage(model, task.train_layer)
    # a staged model's trunk is frozen, so its features are computed once for the whole collection; any
    # other module runs whole on the images (its frozen layers get no gradient step)
    train_feats = tail_input(model, train.normalized(device), start)
    train_y = train.labels.to(device)

    live = model.state_dict(keep_vars=True)  # parameters and buffers by name, the tensors themselves
    trainable = [p for n, p in model.named_parameters() if n in set(task.train_layer)]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trainable:
        p.requires_grad_(True)
    opt = torch.optim.SGD(trainable, lr=recipe.collect_lr, momentum=0.9)

    saved: dict[str, list[torch.Tensor]] = {n: [] for n in task.train_layer}
    order = torch.randperm(len(train_y), generator=generator)
    pos = 0
    for _ in tqdm(range(k), desc="collect", unit="ckpt", leave=False):
        for _ in range(recipe.save_every):
            if pos + recipe.collect_batch_size > len(order):
                order, pos = torch.randperm(len(train_y), generator=generator), 0
            idx = order[pos:pos + recipe.collect_batch_size].to(device)
            pos += recipe.collect_batch_size
            loss = F.cross_entropy(model(train_feats[idx], **tail_kwargs(start)), train_y[idx])
            optimizer_step(loss, opt)
        for n in task.train_layer:
            saved[n].append(live[n].detach().to("cpu", dtype).clone())
    for p in model.parameters():
        p.requires_grad_(True)
    del train_feats
    params = {n: torch.stack(v) for n, v in saved.items()}
    # each rank evaluates its own trunk's checkpoints here: sharding them with the other ranks would mix trunks
    evaluator = BatchedEvaluator(model, test.normalized(device), task.train_layer, device, shard=False)
    accs = accuracies(evaluator.predict_many({n: v.float() for n, v in params.items()}), test.labels)
    return params, accs

def storage_dtype(recipe: Recipe) -> torch.dtype:
    if recipe.storage_dtype not in ("float32", "float16"):
        raise ValueError(f"storage_dtype must be float32 or float16, got {recipe.storage_dtype!r}")
    return getattr(torch, recipe.storage_dtype)

def diversity(params: dict[str, torch.Tensor]) -> dict[str, float]:
    """Mean pairwise L2 distance between checkpoints, absolute and relative to the mean norm."""
    flat = torch.cat([v.reshape(v.shape[0], -1).double() for v in params.values()], dim=1)
    d = torch.cdist(flat, flat)
    k = len(flat)
    mean_dist = (d.sum() / max(1, k * (k - 1))).item()
    mean_norm = flat.norm(dim=1).mean().item()
    return {"mean_pairwise_l2": mean_dist, "mean_norm": mean_norm, "relative": mean_dist / mean_norm}

# how a multi-trunk collection's extra trunks differ from the base (derive_trunk)
TRUNK_MODES = ("finetune", "reinit", "scratch")

def derive_trunk(base_state: dict[str, torch.Tensor], task: Task, train: Split, generator: torch.Generator,
                 device: str = "cpu", desc: str = "trunk", mode: str = "finetune",
                 augment: Augment | None = random_flip) -> nn.Module:
    """Another trunk on clean data. finetune: the base fine-tuned whole for the recipe's trunk_epochs at a
    quarter of its learning rate (close to the base, as a republished model would be); reinit: the first
    half of the trunk's layers re-initialised, then the whole model retrained for trunk_epochs at the full
    rate (early features that differ for real); scratch: a model trained from another initialisation with
    the full recipe (features that share nothing with the base: reach it through a stitch)."""
    if mode not in TRUNK_MODES:
        raise ValueError(f"unknown trunk mode {mode!r}; use one of {', '.join(TRUNK_MODES)}")
    if mode == "scratch":
        return fit(init_model(task, generator), train, Schedule.of(task.recipe), generator, device, desc, augment)
    model = check_architecture(task, base_state)
    if mode == "finetune":
        return fit(model, train, Schedule.of(task.recipe, task.recipe.trunk_epochs, task.recipe.lr / 4), generator,
                   device, desc, augment)
    with seeded_from(generator):
        for module in early_layers(model, task.train_layer):
            module.reset_parameters()
    return fit(model, train, Schedule.of(task.recipe, task.recipe.trunk_epochs), generator, device, desc, augment)

def early_layers(model: nn.Module, train_layer: list[str]) -> list[torch.nn.Module]:
    """The first half (at least one) of the layers with parameters before train_layer's first stage."""
    start = first_stage(model, train_layer)
    trunk = [m for _, m in model.stages()[:start] if any(True for _ in m.parameters())]
    return trunk[:max(1, len(trunk) // 2)]

def _split_k(k: int, parts: int) -> list[int]:
    return [k // parts + (1 if i < k % parts else 0) for i in range(parts)]


def _clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: v.detach().clone() for name, v in state.items()}


def trunk_seed(seed: int, trunk: int) -> int:
    """The seed of trunk `trunk`'s own generator (trunk 0 is the base, on `seed` itself): derived from the trunk, not
    from the process that trains it, so a collection spread over ranks equals the one-process one."""
    if trunk == 0:
        return seed
    return int.from_bytes(hashlib.sha256(f"pdiff-trunk:{seed}:{trunk}".encode()).digest()[:7], "big")


@dataclass
class _Trunk:
    """One trunk's part of a collection, as the rank that made it hands it over."""
    state: dict
    acc: float
    params: dict
    accs: list
    seconds: dict


def run_collect(task: Task, data: RunData, seed: int, spec: CollectSpec = CollectSpec(),
                base: dict[str, torch.Tensor] | None = None, augment: Augment | None = random_flip, device: str = "cpu",
                out: Path | None = None) -> Collection:
    """Train (or take) the base model on data.fit (the training split less the validation images) and collect K
    checkpoints; saved to `out` (by rank 0 alone) unless it is None. Accuracies are measured on data.test. With
    spec.budget, every model trains on that share of the training split alone (a budget donor), and the collection
    records the draw as `trained_on`.

    With spec.trunks > 1, trunk 0 is the base and trunks 1.. are derived from it (`derive_trunk`, spec.trunk_mode);
    each gets its own frozen-trunk collection of about K / trunks checkpoints, and `trunk_of` says which trunk
    every checkpoint came from. Each trunk draws from a generator of its own (`trunk_seed`); under torchrun trunk t is
    made by rank t % world and the parts are gathered, so every rank returns the one-process collection.
    """
    if spec.trunk_mode not in TRUNK_MODES:
        raise ValueError(f"unknown trunk mode {spec.trunk_mode!r}; use one of {', '.join(TRUNK_MODES)}")
    if spec.trunks < dist.world():
        raise ValueError(f"{spec.trunks} trunks cannot be spread over {dist.world()} ranks: give at least one trunk "
                         "per rank (--trunks)")
    k = task.recipe.k if spec.k is None else spec.k
    if k < spec.trunks:
        raise ValueError(f"{k} checkpoints cannot be spread over {spec.trunks} trunks")
    trained_on = None
    if spec.budget is not None:  # a budget donor: every model of this collection trains on the clean budget only
        data, trained_on = data.budget_only(spec.budget, spec.budget_seed)
    t0, given = time.perf_counter(), base is not None
    g = torch.Generator().manual_seed(seed)  # trunk 0's: the base's training, then its collection
    if base is None and (dist.is_main() or spec.trunk_mode != "scratch"):
        # the base is rank 0's trunk; ranks that derive their trunks from it wait for it
        base = fit(init_model(task, g), data.fit, Schedule.of(task.recipe), g, device, "base", augment).state_dict() \
            if dist.is_main() else None
        base = dist.broadcast(_clone(base) if base is not None else None) if spec.trunk_mode != "scratch" else base
    base_s = 0.0 if given else time.perf_counter() - t0
    sizes = _split_k(k, spec.trunks)
    mine = [_collect_trunk(task, data, base, spec, t, g if t == 0 else torch.Generator().manual_seed(trunk_seed(seed, t)),
                           augment, device) for t in dist.mine(spec.trunks)]
    parts: list[_Trunk] = dist.gather(mine, spec.trunks)
    params = {n: torch.cat([p.params[n] for p in parts]) for n in task.train_layer}
    timings = {"base": base_s, **{key: sum(p.seconds[key] for p in parts) for key in ("trunks", "collect")}}
    info = {"diversity": diversity(params), "base_given": given, "timings_s": timings,
            **({"trunk_mode": spec.trunk_mode} if spec.trunks > 1 else {}), "ranks": dist.world(),
            "device": str(device), "train_size": len(data.fit.labels), "test_size": len(data.test.labels),
            **({"trained_on": trained_on} if trained_on else {})}
    coll = Collection(task, layout_of(params, task.train_layer, stacked=True), params, [a for p in parts for a in p.accs],
                      [p.state for p in parts], [t for t, size in enumerate(sizes) for _ in range(size)],
                      [p.acc for p in parts], seed, info)
    if out is not None and dist.is_main():
        coll.save(out)
    return coll


def _collect_trunk(task: Task, data: RunData, base: dict | None, spec: CollectSpec, trunk: int,
                   g: torch.Generator, augment: Augment | None, device) -> _Trunk:
    """Make trunk `trunk` (the base itself for trunk 0) and collect its share of the K checkpoints on its own
    generator `g`."""
    k = _split_k(task.recipe.k if spec.k is None else spec.k, spec.trunks)[trunk]
    t0 = time.perf_counter()
    model = (check_architecture(task, base) if trunk == 0
             else derive_trunk(base, task, data.fit, g, device, f"trunk {trunk}", spec.trunk_mode, augment))
    state, acc = _clone(model.state_dict()), test_accuracy(model, data.test, device)  # before collection moves it
    made = time.perf_counter() - t0
    params, accs = collect_checkpoints(model, task, data.fit, data.test, g, k=k, device=device)
    return _Trunk(state, acc, params, accs, {"trunks": made, "collect": time.perf_counter() - t0 - made})
