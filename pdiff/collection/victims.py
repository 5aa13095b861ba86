"""Backdoored victims: a model trained on poisoned data, from scratch or from the clean base.

scratch: trained from random initialisation (its features share nothing with the clean trunk).
finetuned: the clean base fine-tuned whole on the poisoned data for the recipe's finetune_epochs at
a quarter of its learning rate (its trunk stays aligned with the clean one).
Either way the trigger is stamped per batch after the random flip, on indices chosen once from the seed.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from pdiff.models.archs import StagedNet
from pdiff.data.triggers import Trigger, apply_trigger, asr_ra, poison_indices, triggered_test_set
from pdiff.models.fit import BatchHook, Objective, Schedule, fit, init_model, test_accuracy
from pdiff.collection.folder import BASE_FILE, Victim, save_victim, victim_files, victim_name
from pdiff.core.config import Task
from pdiff.data.datasets import Split
from pdiff.data.plan import RunData
from pdiff.models.staged import predict
from pdiff.models.loading import check_architecture, load_target

VICTIM_KINDS = ("scratch", "finetuned")


def train_victim(task: Task, trigger: Trigger, data: RunData, seed: int, device: str = "cpu",
                 kind: str = "scratch", base: dict[str, torch.Tensor] | None = None) -> Victim:
    """A victim trained on poisoned data (data.fit: the training split less the validation images), with its
    report (ACC, ASR, RA on the test split)."""
    train, test = data.fit, data.test
    if kind not in VICTIM_KINDS:
        raise ValueError(f"unknown victim kind {kind!r}; use one of {', '.join(VICTIM_KINDS)}")
    trigger.check(train.dataset)
    g = torch.Generator().manual_seed(seed)
    poisoned, stamp = poisoned_training(train, trigger, g)
    t0 = time.perf_counter()
    if kind == "scratch":
        model = fit(init_model(task, g), poisoned, Schedule.of(task.recipe), g, device, "victim", objective=Objective(batch_hook=stamp))
    else:
        if base is None:
            raise ValueError("a finetuned victim starts from the clean base; give its state dict")
        schedule = Schedule.of(task.recipe, task.recipe.finetune_epochs, task.recipe.lr / 4)
        model = fit(check_architecture(task, base), poisoned, schedule, g, device, "finetune victim", objective=Objective(batch_hook=stamp))
    seconds = time.perf_counter() - t0
    report = {"format": "pdiff-victim", "format_version": 1, "task": task.to_dict(), "kind": kind,
              "trigger": trigger.to_dict(), "poisoned": "after augmentation", "seed": seed,
              "train_size": len(train.labels), **backdoor_metrics(model, test, trigger, device),
              "timings_s": {"train": seconds}, "device": str(device)}
    return Victim({k: v.detach().cpu() for k, v in model.state_dict().items()}, report)


def poisoned_training(train: Split, trigger: Trigger, generator: torch.Generator) -> tuple[Split, BatchHook]:
    """The training split relabelled (a `rate` share, chosen once, gets the target label) and the batch hook
    for `fit` that stamps the trigger on those images after the random flip, so the victim learns the
    trigger as it is scored, never its mirror image."""
    idx = poison_indices(len(train.labels), trigger.rate, generator)
    labels = train.labels.clone()
    labels[idx] = trigger.target
    chosen = torch.zeros(len(labels), dtype=torch.bool)
    chosen[idx] = True

    def stamp(batch: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        hit = chosen[batch]
        if hit.any():
            images = images.clone()
            images[hit] = apply_trigger(images[hit], trigger)
        return images

    return replace(train, labels=labels), stamp  # replace keeps a split's own mean/std


def run_victim(task: Task, trigger: Trigger, out: Path, data: RunData, seed: int, device: str = "cpu",
               kind: str = "scratch", name: str | None = None) -> dict:
    """Train a victim (a finetuned one starts from the base in `out`) and write it into the collection `out`, under
    `name` (default: its kind and trigger, collection.folder.victim_name)."""
    out = Path(out)
    base = None
    if kind == "finetuned":
        if not (out / BASE_FILE).is_file():
            raise FileNotFoundError(f"a finetuned victim starts from the clean base, but {out / BASE_FILE} is missing "
                                    "(run `python -m pdiff collect` into this folder first)")
        base = load_target(task, out / BASE_FILE).state_dict()
    victim = train_victim(task, trigger, data, seed, device, kind, base)
    name = name or victim_name(kind, trigger)
    save_victim(out, victim, task, name)
    return {**victim.report, "file": victim_files(name)[0]}


def backdoor_metrics(model: StagedNet, test: Split, trigger: Trigger, device: str = "cpu") -> dict[str, float]:
    """ACC on the clean test split; ASR and RA on its triggered non-target images (percent)."""
    acc = test_accuracy(model, test, device)
    trig_images, trig_labels = triggered_test_set(test.images, test.labels, trigger)
    pred = predict(model, test.prepare(trig_images, device)).argmax(-1).cpu()
    asr, ra = asr_ra(pred, trig_labels, trigger.target)
    return {"acc": acc, "asr": asr, "ra": ra}
