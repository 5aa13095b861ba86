"""Issue 13 item 4: does the order of poisoning and the random flip decide which trigger a victim learns?

Two scratch BadNets victims on the first 10,000 training images (2 epochs, seed 1), one poisoned before the
flip (pdiff 0.2.0), one stamped after it (today's victims.poisoned_training); each one's ASR on the first 2,000
test images with the trigger at its corner (bottom-right) and mirrored (bottom-left).

    python experiments/trigger_order.py        # writes results/trigger-order.json (minutes on a CPU)
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(1, str(Path(__file__).resolve().parent.parent))  # from a checkout, uninstalled: pdiff is one folder up
from pdiff.data.triggers import Trigger, poison, preset  # noqa: E402
from pdiff.models.fit import Objective, Schedule, fit, init_model  # noqa: E402
from pdiff.data.datasets import Split  # noqa: E402
from pdiff.core.files import write_json  # noqa: E402
from pdiff.models.tasks import get_task  # noqa: E402
from pdiff.collection.victims import backdoor_metrics, poisoned_training  # noqa: E402


def main() -> None:
    train, test = Split.load("fashion-mnist", "train").subset(10000), Split.load("fashion-mnist", "test").subset(2000)
    task = get_task("fmnist-convnet")
    task.recipe.epochs = 2
    out = {}
    for order in ("poison-then-flip", "flip-then-poison"):
        g = torch.Generator().manual_seed(1)
        t0 = time.perf_counter()
        if order == "poison-then-flip":
            images, labels, _ = poison(train.images, train.labels, preset("badnets"), g)
            model = fit(init_model(task, g), Split(images, labels, train.dataset), Schedule.of(task.recipe), g)
        else:
            poisoned, stamp = poisoned_training(train, preset("badnets"), g)
            model = fit(init_model(task, g), poisoned, Schedule.of(task.recipe), g, objective=Objective(batch_hook=stamp))
        out[order] = {f"asr_{c}": backdoor_metrics(model, test, Trigger(kind="patch", corner=c))["asr"]
                      for c in ("bottom-right", "bottom-left")}
        out[order].update(acc=backdoor_metrics(model, test, preset("badnets"))["acc"],
                          train_s=time.perf_counter() - t0)
    print(json.dumps(out))
    write_json(Path(__file__).resolve().parent.parent / "results" / "trigger-order.json", out)


if __name__ == "__main__":
    main()
