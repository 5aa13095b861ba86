"""The trunk zoo (issue 31): ConvNet trunks trained from scratch on the first 55,000 training images, each with a few
head checkpoints collected on its frozen trunk. Resumable: one trunk is one pair of files, written atomically, and a
trunk already on disk is skipped, so the zoo grows across sessions and background runs.

Trunk t draws from its own generator, `trunk_seed(0, t)`: the same trunk `collect --trunks M --trunk-mode scratch
--seed 0` makes (its data order and initialisation), so trunks 1-19 of checkpoints/fmnist-convnet-trunks are trunks
1-19 here and are not retrained (`--first 20`).

    OMP_NUM_THREADS=1 python experiments/trunk_zoo.py --first 20 --last 72 --heads 10   # hours on one CPU thread
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(ROOT))  # from a checkout, uninstalled: pdiff is one folder up
from pdiff.collection.collect import collect_checkpoints, derive_trunk, trunk_seed  # noqa: E402
from pdiff.core.files import write_json, write_safetensors  # noqa: E402
from pdiff.core.settings import DataSpec  # noqa: E402
from pdiff.data.datasets import Split  # noqa: E402
from pdiff.data.plan import RunData  # noqa: E402
from pdiff.models.fit import test_accuracy  # noqa: E402
from pdiff.models.tasks import get_task  # noqa: E402

OUT = ROOT / "checkpoints" / "fmnist-convnet-zoo" / "parts"


def make_trunk(t: int, data: RunData, heads: int, out: Path) -> dict:
    """Trunk t from scratch and `heads` head checkpoints on it; written as trunk-t.safetensors (the whole model),
    trunk-t.heads.safetensors (the checkpoints) and trunk-t.json (accuracies, timings)."""
    task = get_task("fmnist-convnet")
    g = torch.Generator().manual_seed(trunk_seed(0, t))
    t0 = time.perf_counter()
    model = derive_trunk(None, task, data.fit, g, desc=f"trunk {t}", mode="scratch")
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    acc, made = test_accuracy(model, data.test), time.perf_counter() - t0
    params, accs = collect_checkpoints(model, task, data.fit, data.test, g, k=heads)
    write_safetensors(out / f"trunk-{t}.safetensors", state, {"format": "pdiff-model", "kind": "trunk"})
    write_safetensors(out / f"trunk-{t}.heads.safetensors", params)
    info = {"trunk": t, "seed": trunk_seed(0, t), "acc": acc, "head_accs": accs, "epochs": task.recipe.epochs,
            "train_size": len(data.fit.labels), "seconds": {"trunk": made, "heads": time.perf_counter() - t0 - made}}
    write_json(out / f"trunk-{t}.json", info)  # last: its presence says the trunk is whole
    return info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--first", type=int, default=20, help="first trunk number made here")
    p.add_argument("--last", type=int, default=72, help="one past the last trunk number")
    p.add_argument("--heads", type=int, default=10, help="head checkpoints per trunk")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    data = RunData(Split.load("fashion-mnist", "test"), Split.load("fashion-mnist", "train"), DataSpec())
    for t in range(args.first, args.last):
        if (args.out / f"trunk-{t}.json").exists():
            continue
        info = make_trunk(t, data, args.heads, args.out)
        print(f"trunk {t}: acc {info['acc']:.2f}, heads {min(info['head_accs']):.2f}-{max(info['head_accs']):.2f}, "
              f"{info['seconds']['trunk']:.0f} s + {info['seconds']['heads']:.0f} s", flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
