"""Your own model and data with pdiff, in memory: a small nn.Sequential CNN on Fashion-MNIST given as plain
tensors; collect -> train -> sample -> evaluate.
Run from the repository (or anywhere once pdiff is installed): python examples/own_model.py [OUT]"""
import json
import sys
from pathlib import Path

from torch import nn

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # from a checkout, uninstalled: pdiff is one folder up
import pdiff  # noqa: E402

data, held = pdiff.Split.load("fashion-mnist", "train"), pdiff.Split.load("fashion-mnist", "test")
x, y, x_test, y_test = data.images, data.labels, held.images, held.labels  # uint8 (N, 1, 28, 28), int64
norm = {"mean": (0.286,), "std": (0.353,)}  # per channel, applied after scaling to [0, 1]
train = pdiff.Split(x[:5000].float() / 255, y[:5000], **norm)  # float images in [0, 1]; uint8 works as well
test = pdiff.Split(x_test[:2000], y_test[:2000], **norm)


def make_model():  # any nn.Module; this one is not a pdiff StagedNet, so it is evaluated whole
    return nn.Sequential(nn.Conv2d(1, 8, 5, stride=2, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                         nn.Linear(8 * 7 * 7, 64), nn.ReLU(), nn.BatchNorm1d(64), nn.Linear(64, 10))


task = pdiff.task(make_model, ["6.weight", "6.bias", "7.weight", "7.bias"], epochs=2, k=30, save_every=10)
collection = pdiff.collect(task, train, test, seed=0)  # trains the base, then 30 checkpoints of layers 6 and 7
bundle = pdiff.train(collection, train, test, autoencoder={"steps": 300}, ddpm={"steps": 600}, seed=0)
samples = pdiff.sample(bundle, 50, seed=0)  # the CLI's sampler: the full DDPM chain
report = pdiff.evaluate(samples, test)  # beside the 30 originals and the memorisation baselines
print(report.text())
print("summary:", json.dumps({k: report["sources"][k]["summary"]["acc"] for k in ("generated", "originals")}))
if len(sys.argv) > 1:  # each object saves itself to a folder
    for name, obj in [("collection", collection), ("bundle", bundle), ("samples", samples), ("report", report)]:
        obj.save(f"{sys.argv[1]}/{name}")
