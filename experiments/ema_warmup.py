"""Does the EMA's zero start pull a short training to the mean? The API example's pipeline (examples/own_model.py:
5,000 training images, K = 30, a 600-step DDPM) trained twice from the same collection and seed, once with the
EMA's fixed decay of 0.999 (which keeps 0.999^600 = 55 % of the zero-output initial denoiser) and once with
today's warm-up; 50 sets sampled from each with the CLI's sampler (DDPM-1000) and with DDIM-50, measured on 2,000
test images beside the originals.

    python experiments/ema_warmup.py      # writes results/own-model/ema-warmup.json (minutes on a CPU)
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(ROOT))  # from a checkout, uninstalled: pdiff is one folder up
import pdiff  # noqa: E402
from pdiff.core.files import write_json  # noqa: E402
from pdiff.core.settings import EvalSettings  # noqa: E402
from pdiff.generator import training  # noqa: E402

NORM = {"mean": (0.286,), "std": (0.353,)}


def make_model():  # the example's model
    return nn.Sequential(nn.Conv2d(1, 8, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 7 * 7, 64), nn.ReLU(), nn.BatchNorm1d(64), nn.Linear(64, 10))


def measure(bundle, test, sampler: str, steps: int) -> dict:
    report = pdiff.evaluate(pdiff.sample(bundle, 50, sampler, steps, seed=0), test,
                            settings=EvalSettings(tsne=False))
    nov = report["novelty"]
    return {"generated": nov["generated"], "originals": nov["originals"], "gaussian": nov["gaussian"]}


def main() -> None:
    data, held = pdiff.Split.load("fashion-mnist", "train"), pdiff.Split.load("fashion-mnist", "test")
    train = pdiff.Split(data.images[:5000].float() / 255, data.labels[:5000], **NORM)
    test = pdiff.Split(held.images[:2000], held.labels[:2000], **NORM)
    task = pdiff.task(make_model, ["6.weight", "6.bias", "7.weight", "7.bias"], epochs=2, k=30, save_every=10)
    collection = pdiff.collect(task, train, test, seed=0)
    out, warm = {}, training.ema_decay
    for name, decay in (("fixed 0.999 (before)", lambda step, d: d), ("warmed up (today)", warm)):
        training.ema_decay = decay
        t0 = time.perf_counter()
        bundle = pdiff.train(collection, train, autoencoder={"steps": 300}, ddpm={"steps": 600}, seed=0)
        out[name] = {"train_s": time.perf_counter() - t0,
                     **{f"{s}-{n}": measure(bundle, test, s, n) for s, n in (("ddpm", 50), ("ddim", 50))}}
    training.ema_decay = warm
    print(json.dumps({k: {s: v[s]["generated"] for s in v if s != "train_s"} for k, v in out.items()}, indent=1))
    write_json(ROOT / "results" / "own-model" / "ema-warmup.json", out)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
