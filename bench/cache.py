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

from pdiff.app.request import APP_SAMPLING  # noqa: E402
from pdiff.core.settings import EvalSettings  # noqa: E402
from pdiff.data.datasets import DataError, Split  # noqa: E402
from pdiff.data.plan import RunData  # noqa: E402
from pdiff.generator.locate import load_bundle  # noqa: E402
from pdiff.measure.engine import EngineCache  # noqa: E402
from pdiff.measure.targets import resolve_target  # noqa: E402
from pdiff.studies.report import run_report  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default="checkpoints/fmnist-convnet/bundle")
    ap.add_argument("--target", default="clean")
    ap.add_argument("--n", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20, help="DDIM steps, as the load bench uses")
    args = ap.parse_args()
    bundle = load_bundle(args.bundle)
    try:  # the app's setting: validation and BatchNorm images from the training split where it exists
        train = Split.load(bundle.task.dataset, "train")
    except DataError:
        train = None
    data = RunData(Split.load(bundle.task.dataset, "test"), train)
    engines = EngineCache(size=4)
    target = resolve_target(bundle, args.target)
    times = []
    for seed in (0, 1, 2):
        t0 = time.perf_counter()
        sampling = APP_SAMPLING.changed(n=args.n, steps=args.steps, seed=seed)
        run_report(bundle, target, data, sampling, EvalSettings(), engines)
        times.append(time.perf_counter() - t0)
    print(json.dumps({"name": "cache", "task": bundle.task.name, "target": args.target, "n": args.n,
                      "threads": torch.get_num_threads(), "first_s": round(times[0], 3),
                      "second_s": round(times[1], 3), "third_s": round(times[2], 3),
                      "first_over_second": round(times[0] / times[1], 2)}))


if __name__ == "__main__":
    main()
