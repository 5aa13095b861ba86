"""How long should the budget donor train? The donor is a clean ConvNet trained on the clean budget alone (3,000
images drawn with seed 0 from the first 55,000 training images); its epochs are chosen here on the validation split
(the last 5,000 training images, which no model sees), never on the test split.

    python experiments/donor_epochs.py     # writes results/threat-model/donor-epochs.json (minutes on a CPU)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(ROOT))  # from a checkout, uninstalled: pdiff is one folder up
from pdiff.core.files import write_json  # noqa: E402
from pdiff.core.settings import DataSpec  # noqa: E402
from pdiff.data.datasets import Split  # noqa: E402
from pdiff.data.plan import RunData  # noqa: E402
from pdiff.models.fit import Schedule, fit, init_model, test_accuracy  # noqa: E402
from pdiff.models.tasks import get_task  # noqa: E402

EPOCHS = (8, 20, 40, 80)


def main() -> None:
    data = RunData(Split.load("fashion-mnist", "test"), Split.load("fashion-mnist", "train"), DataSpec(budget_seed=0))
    budget = data.budget(torch.Generator())
    task = get_task("fmnist-convnet")
    out = {"budget_images": len(budget.labels), "validation_images": len(data.validation.labels), "runs": {}}
    for epochs in EPOCHS:
        g = torch.Generator().manual_seed(0)
        t0 = time.perf_counter()
        model = fit(init_model(task, g), budget, Schedule.of(task.recipe, epochs=epochs), g, desc=f"{epochs} epochs")
        out["runs"][epochs] = {"validation_acc": test_accuracy(model, data.validation), "train_s": time.perf_counter() - t0}
        print(epochs, out["runs"][epochs], flush=True)
    out["chosen"] = max(out["runs"], key=lambda e: out["runs"][e]["validation_acc"])
    write_json(ROOT / "results" / "threat-model" / "donor-epochs.json", out)
    print("chosen on validation:", out["chosen"])


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
