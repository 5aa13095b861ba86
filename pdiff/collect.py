"""Train a base model (clean or backdoored) and collect K checkpoints of its train_layer.

Collection freezes the trunk and BatchNorm statistics, so every collected vector fits the
saved base model exactly. The frozen trunk's output is the same at every step, so it is
computed once and the train_layer tail is trained on the cached features.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from pdiff.archs import StagedNet
from pdiff.backdoor import Trigger, asr_ra, poison, triggered_test_set
from pdiff.config import Recipe, Task
from pdiff.data import normalize
from pdiff.evaluate import BatchedEvaluator, accuracies, accuracy, predict
from pdiff.files import write_json, write_safetensors
from pdiff.params import layout_of
from pdiff.targets import check_architecture, load_target
from pdiff.tasks import build_model

BASE_FILE = "base.safetensors"
CHECKPOINTS_FILE = "checkpoints.safetensors"
MANIFEST_FILE = "manifest.json"
VICTIM_FILE = "victim.safetensors"
VICTIM_JSON = "victim.json"


@dataclass
class Split:
    """Raw uint8 images and labels of one split, with the dataset whose normalisation applies."""
    images: torch.Tensor
    labels: torch.Tensor
    dataset: str

    def normalized(self, device: str | torch.device = "cpu") -> torch.Tensor:
        return normalize(self.images.to(device), self.dataset)

    def subset(self, n: int | None) -> "Split":
        return self if n is None else Split(self.images[:n], self.labels[:n], self.dataset)


def _augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flips (the same augmentation for every model; none at test time)."""
    flip = torch.rand(len(x), generator=generator) < 0.5
    x = x.clone()
    x[flip] = x[flip].flip(-1)
    return x


def fit(model: StagedNet, train: Split, recipe: Recipe, generator: torch.Generator,
        epochs: int | None = None, lr: float | None = None, device: str = "cpu", desc: str = "train") -> StagedNet:
    """Train the whole model with AdamW and cosine decay; the recipe's settings unless given."""
    epochs = recipe.epochs if epochs is None else epochs
    lr = recipe.lr if lr is None else lr
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=recipe.weight_decay)
    steps_per_epoch = math.ceil(len(train.labels) / recipe.batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs * steps_per_epoch))
    bar = tqdm(total=epochs * steps_per_epoch, desc=desc, unit="step", leave=False)
    for _ in range(epochs):
        order = torch.randperm(len(train.labels), generator=generator)
        for i in range(0, len(order), recipe.batch_size):
            idx = order[i:i + recipe.batch_size]
            x = normalize(_augment(train.images[idx], generator).to(device), train.dataset)
            loss = F.cross_entropy(model(x), train.labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    return model.eval()


def init_model(task: Task, generator: torch.Generator) -> StagedNet:
    """A fresh model whose initialisation comes from `generator` (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        return build_model(task)


def test_accuracy(model: StagedNet, test: Split, device: str = "cpu") -> float:
    return accuracy(predict(model.to(device), test.normalized(device)).cpu(), test.labels)


@dataclass
class Collection:
    """K checkpoints of train_layer: {name: (K, *shape)} and each one's test accuracy."""
    params: dict[str, torch.Tensor]
    accs: list[float]
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


def collect_checkpoints(model: StagedNet, task: Task, train: Split, test: Split, generator: torch.Generator,
                        k: int | None = None, device: str = "cpu") -> Collection:
    """Keep training only train_layer on the frozen trunk (BN statistics frozen too); save K times.

    BatchNorm statistics named in train_layer are saved with every checkpoint but never change:
    they are the trunk's, the ones the trained layers learned under. Accuracies are measured on
    the values as stored (after rounding to the recipe's storage_dtype).
    """
    recipe = task.recipe
    k = recipe.k if k is None else k
    dtype = storage_dtype(recipe)
    t0 = time.perf_counter()
    model.to(device).eval()  # eval mode: every BatchNorm keeps the base model's running statistics
    start = min(model.stage_of(n) for n in task.train_layer)
    # the trunk is frozen, so its features are computed once for the whole collection
    train_feats = predict(model, train.normalized(device), 0, start)
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
            loss = F.cross_entropy(model(train_feats[idx], start), train_y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        for n in task.train_layer:
            saved[n].append(live[n].detach().to("cpu", dtype).clone())
    for p in model.parameters():
        p.requires_grad_(True)
    del train_feats
    params = {n: torch.stack(v) for n, v in saved.items()}
    evaluator = BatchedEvaluator(model, test.normalized(device), task.train_layer, device)
    accs = accuracies(evaluator.predict_many({n: v.float() for n, v in params.items()}), test.labels)
    return Collection(params, accs, time.perf_counter() - t0)


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


def _state_meta(task: Task, kind: str) -> dict[str, str]:
    return {"format": "pdiff-model", "task": task.name, "arch": task.arch, "kind": kind}


def trunk_file(trunk: int) -> str:
    """Trunk 0 is the base itself; the others are stored beside it."""
    return BASE_FILE if trunk == 0 else f"trunk-{trunk}.safetensors"


def derive_trunk(base_state: dict[str, torch.Tensor], task: Task, train: Split, generator: torch.Generator,
                 device: str = "cpu", desc: str = "trunk") -> StagedNet:
    """The clean base fine-tuned whole on clean data for the recipe's trunk_epochs at a quarter of its
    learning rate: a trunk close to the base but not the same, as a republished model would be."""
    model = check_architecture(task, base_state)
    return fit(model, train, task.recipe, generator, epochs=task.recipe.trunk_epochs, lr=task.recipe.lr / 4,
               device=device, desc=desc)


def _split_k(k: int, parts: int) -> list[int]:
    return [k // parts + (1 if i < k % parts else 0) for i in range(parts)]


def run_collect(task: Task, out: Path, train: Split, test: Split, seed: int, k: int | None = None,
                device: str = "cpu", trunks: int = 1, base: dict[str, torch.Tensor] | None = None) -> dict:
    """Train (or take) the base model, collect K checkpoints, write base + checkpoints + manifest to `out`.

    With trunks > 1, trunk 0 is the base and trunks 1.. are derived from it (`derive_trunk`); each
    gets its own frozen-trunk collection of about K / trunks checkpoints, and the manifest's
    `trunk_of` says which trunk every checkpoint came from.
    """
    if trunks < 1:
        raise ValueError(f"trunks must be at least 1, got {trunks}")
    k = task.recipe.k if k is None else k
    if k < trunks:
        raise ValueError(f"{k} checkpoints cannot be spread over {trunks} trunks")
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    if base is None:
        model = fit(init_model(task, g), train, task.recipe, g, device=device, desc="base")
        base_state = {name: v.detach().clone() for name, v in model.state_dict().items()}
    else:
        base_state = {name: v.detach().clone() for name, v in base.items()}
    timings = {"base": time.perf_counter() - t0 if base is None else 0.0, "trunks": 0.0, "collect": 0.0}

    trunk_states, trunk_accs, parts, trunk_of, accs = [], [], [], [], []
    for trunk, k_trunk in enumerate(_split_k(k, trunks)):
        t0 = time.perf_counter()
        if trunk == 0:
            model = check_architecture(task, base_state)
        else:
            model = derive_trunk(base_state, task, train, g, device, desc=f"trunk {trunk}")
        trunk_states.append({name: v.detach().clone() for name, v in model.state_dict().items()})  # before collection moves it
        trunk_accs.append(test_accuracy(model, test, device))
        timings["trunks"] += time.perf_counter() - t0
        coll = collect_checkpoints(model, task, train, test, g, k=k_trunk, device=device)
        timings["collect"] += coll.seconds
        parts.append(coll.params)
        accs += coll.accs
        trunk_of += [trunk] * k_trunk
    params = {n: torch.cat([p[n] for p in parts]) for n in task.train_layer}
    layout = layout_of(params, task.train_layer, stacked=True)

    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # no old manifest may describe new files, even after a crash
    for trunk, state in enumerate(trunk_states):
        write_safetensors(out / trunk_file(trunk), state, _state_meta(task, "clean" if trunk == 0 else "trunk"))
    write_safetensors(out / CHECKPOINTS_FILE, params, {"format": "pdiff-checkpoints", "task": task.name})
    manifest = {
        "format": "pdiff-collection", "format_version": 1, "task": task.to_dict(),
        "layout": [[n, list(s)] for n, s in layout], "k": len(accs), "seed": seed,
        "base_acc": trunk_accs[0], "accs": accs, "diversity": diversity(params),
        "trunks": [{"id": i, "file": trunk_file(i), "acc": a} for i, a in enumerate(trunk_accs)],
        "trunk_of": trunk_of, "base_given": base is not None,
        "timings_s": timings, "device": str(device),
        "train_size": len(train.labels), "test_size": len(test.labels),
    }
    write_json(out / MANIFEST_FILE, manifest)
    return manifest


VICTIM_KINDS = ("scratch", "finetuned")


def victim_files(kind: str, trigger_kind: str) -> tuple[str, str]:
    """(weights, report) file names; the scratch BadNets victim keeps the plain names bundles ship."""
    if (kind, trigger_kind) == ("scratch", "badnets"):
        return VICTIM_FILE, VICTIM_JSON
    return f"victim-{kind}-{trigger_kind}.safetensors", f"victim-{kind}-{trigger_kind}.json"


def run_victim(task: Task, trigger: Trigger, out: Path, train: Split, test: Split, seed: int,
               device: str = "cpu", kind: str = "scratch") -> dict:
    """Train a backdoored victim on poisoned data and write its weights and report to `out`.

    scratch: trained from random initialisation (its features share nothing with the clean trunk).
    finetuned: the clean base in `out` fine-tuned whole on the poisoned data for the recipe's
    finetune_epochs at a quarter of its learning rate (its trunk stays aligned with the clean one).
    """
    if kind not in VICTIM_KINDS:
        raise ValueError(f"unknown victim kind {kind!r}; use one of {', '.join(VICTIM_KINDS)}")
    g = torch.Generator().manual_seed(seed)
    images, labels, _ = poison(train.images, train.labels, trigger, g)
    poisoned = Split(images, labels, train.dataset)
    t0 = time.perf_counter()
    if kind == "scratch":
        model = fit(init_model(task, g), poisoned, task.recipe, g, device=device, desc="victim")
    else:
        if not (out / BASE_FILE).is_file():
            raise FileNotFoundError(f"a finetuned victim starts from the clean base, but {out / BASE_FILE} is missing "
                                    "(run `python -m pdiff collect` into this folder first)")
        model = load_target(task, out / BASE_FILE)
        model = fit(model, poisoned, task.recipe, g, epochs=task.recipe.finetune_epochs, lr=task.recipe.lr / 4,
                    device=device, desc="finetune victim")
    seconds = time.perf_counter() - t0
    metrics = backdoor_metrics(model, test, trigger, device)
    weights, report_file = victim_files(kind, trigger.kind)
    out.mkdir(parents=True, exist_ok=True)
    (out / report_file).unlink(missing_ok=True)
    write_safetensors(out / weights, model.state_dict(), _state_meta(task, f"victim-{kind}"))
    report = {"format": "pdiff-victim", "format_version": 1, "task": task.to_dict(), "kind": kind,
              "trigger": trigger.to_dict(), "seed": seed, **metrics, "timings_s": {"train": seconds},
              "device": str(device), "file": weights}
    write_json(out / report_file, report)
    return report


def backdoor_metrics(model: StagedNet, test: Split, trigger: Trigger, device: str = "cpu") -> dict[str, float]:
    """ACC on the clean test split; ASR and RA on its triggered non-target images (percent)."""
    acc = test_accuracy(model, test, device)
    trig_images, trig_labels = triggered_test_set(test.images, test.labels, trigger)
    pred = predict(model, normalize(trig_images.to(device), test.dataset)).argmax(-1).cpu()
    asr, ra = asr_ra(pred, trig_labels, trigger.target)
    return {"acc": acc, "asr": asr, "ra": ra}
