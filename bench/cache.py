"""The app's second call: a report on the same target with another seed, with the engine cache, against
the first call (trunk features, triggered test set, the originals' results computed afresh).

Prints one JSON line. Usage: python bench/cache.py [--bundle B] [--target clean] [--n 10] [--steps 20]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pdiff.bundle import Bundle  # noqa: E402
from pdiff.data import Split  # noqa: E402
from pdiff.report import EngineCache, run_report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default="checkpoints/fmnist-convnet/bundle")
    ap.add_argument("--target", default="clean")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps, as the load bench uses")
    args = ap.parse_args()
    bundle = Bundle.load(args.bundle)
    test = Split.load(bundle.task.dataset, "test")
    try:  # the app's setting: validation and BatchNorm images from the training split where it exists
        train = Split.load(bundle.task.dataset, "train")
        extra = {"validation": train.last(5000), "bn_images": train.subset(512)}
    except Exception:
        extra = {}
    engines = EngineCache(size=4)
    times = []
    for seed in (0, 1, 2):
        t0 = time.perf_counter()
        run_report(bundle, args.target, args.n, seed, "ddim", args.steps, test=test, engines=engines, **extra)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"name": "cache", "task": bundle.task.name, "target": args.target, "n": args.n,
                      "threads": torch.get_num_threads(), "first_s": round(times[0], 3),
                      "second_s": round(times[1], 3), "third_s": round(times[2], 3),
                      "first_over_second": round(times[0] / times[1], 2)}))


if __name__ == "__main__":
    main()
