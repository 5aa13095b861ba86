"""Small helpers the tests share (pytest puts this folder on sys.path)."""
import copy

import torch.nn.functional as F
from torch import nn

from pdiff.core.config import Task


def with_recipe(bundle, **changes):
    """A shallow copy of `bundle` whose task recipe has `changes`; the session-wide bundle stays as it is."""
    changed = copy.copy(bundle)
    changed.task = Task.from_dict(bundle.task.to_dict())
    for name, value in changes.items():
        setattr(changed.task.recipe, name, value)
    return changed


def write_cifar(root, name="cifar10", per_batch=40, n_test=40, seed=0):
    """A small CIFAR folder in the official python-batch layout (pickled dicts of numpy arrays, bytes keys).

    Each class has its own mean colour, so a model can learn something from a few hundred images."""
    import pickle
    from pathlib import Path

    import numpy as np

    rng = np.random.default_rng(seed)
    classes, folder, label_key = ((10, "cifar-10-batches-py", b"labels") if name == "cifar10"
                                  else (100, "cifar-100-python", b"fine_labels"))
    files = ({**{f"data_batch_{i}": per_batch for i in range(1, 6)}, "test_batch": n_test} if name == "cifar10"
             else {"train": 5 * per_batch, "test": n_test})
    out = Path(root) / folder
    out.mkdir(parents=True, exist_ok=True)
    colours = rng.integers(0, 256, size=(classes, 3))
    for file, n in files.items():
        labels = rng.integers(0, classes, size=n)
        images = np.clip(colours[labels][:, :, None] + rng.normal(0, 40, size=(n, 3, 1024)), 0, 255)
        batch = {b"batch_label": file.encode(), b"data": images.astype(np.uint8).reshape(n, 3072),
                 label_key: labels.tolist(), b"filenames": [f"{i}.png".encode() for i in range(n)]}
        with open(out / file, "wb") as f:
            pickle.dump(batch, f)
    meta = {b"label_names": [f"c{i}".encode() for i in range(classes)]}
    with open(out / ("batches.meta" if name == "cifar10" else "meta"), "wb") as f:
        pickle.dump(meta, f)
    return out


class BBBlock(nn.Module):
    """A pre-activation block laid out as BackdoorBench's models/preact_resnet.py saves it."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False))

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        skip = self.shortcut(pre) if hasattr(self, "shortcut") else x
        return self.conv2(F.relu(self.bn2(self.conv1(pre)))) + skip


class BBPreActResNet18(nn.Module):
    def __init__(self, num_classes=10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        widths, cin = [64, 128, 256, 512], 64
        for i, w in enumerate(widths):
            setattr(self, f"layer{i + 1}", nn.Sequential(BBBlock(cin, w, 1 if i == 0 else 2), BBBlock(w, w, 1)))
            cin = w
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.linear = nn.Linear(512, num_classes)

    def forward(self, x):
        x = self.layer4(self.layer3(self.layer2(self.layer1(self.conv1(x)))))
        return self.linear(self.avgpool(x).flatten(1))


def report(bundle, target="clean", test=None, *, n=3, seed=0, sampler="ddim", steps=3, train=None, data=None,
           engines=None, trigger=None, **settings):
    """studies.report.run_report with the objects built from plain values, as the CLI builds them: the target typed
    once (measure.targets.resolve_target), the sampling spec, the data (`test` and `train`, or a RunData) and the
    evaluation settings (EvalSettings's fields as keywords). Returns (report, vectors)."""
    from pdiff.core.settings import EvalSettings, SamplingSpec
    from pdiff.data.plan import RunData
    from pdiff.measure.targets import resolve_target
    from pdiff.studies.report import run_report

    data = data if data is not None else RunData(test, train)
    return run_report(bundle, resolve_target(bundle, target, trigger), data, SamplingSpec(n, sampler, steps, seed),
                      EvalSettings(**settings), engines)


def transfer(bundle, victim, train, test, *, n=3, seeds=(0,), steps=3, methods=(), budget=0.05, shrink=0.0,
             stitch_epochs=0, epochs=10, k=None, trigger=None, anp_iterations=20, revived=1, anp_threshold=None):
    """studies.transfer.run_transfer with its objects built as the CLI builds them (no validation split held out)."""
    from pdiff.core.settings import DataSpec, DefenceSettings, SamplingSpec, StitchSettings, TransferSettings
    from pdiff.data.plan import RunData
    from pdiff.measure.targets import resolve_target
    from pdiff.studies.transfer import run_transfer

    settings = TransferSettings(tuple(methods), tuple(seeds), DefenceSettings(epochs, k, anp_iterations, anp_threshold),
                                StitchSettings(shrink, stitch_epochs), revived)
    data = RunData(test, train, DataSpec(validation=0, budget=budget))
    return run_transfer(bundle, resolve_target(bundle, victim, trigger), data, SamplingSpec(n, "ddim", steps), settings)


def stitched(bundle, target, test, budget, shrink=0.0):
    """measure.stitch.stitched_engine on `target` (a Target) from a plain engine on `test`: (engine, info)."""
    from pdiff.core.settings import StitchSettings
    from pdiff.measure.engine import TargetEngine
    from pdiff.measure.stitch import stitched_engine

    engine = TargetEngine(bundle.task, bundle.layout, target, test)
    return stitched_engine(engine, bundle.base_state, budget, StitchSettings(shrink))
