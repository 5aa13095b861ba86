"""ANP's mask training per step: the convolutions channels-last (what pdiff.measure.defences.anp_masks runs) against
contiguous tensors, on the shipped scratch BadNets victim and a 3,000-image clean budget, in the same process; and
what 2,000 steps cost at the faster layout. One mask step is a clean forward, ANP_STEPS noise ascent steps and a
robust and a natural forward and backward on 128 images.

Prints one JSON line. Usage: python bench/anp.py [--steps 30] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pdiff.data.datasets import Split  # noqa: E402
from pdiff.data.plan import draw_budget  # noqa: E402
from pdiff.measure.defences import anp_masks  # noqa: E402
from pdiff.models.tasks import build_model, get_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=30, help="mask steps per timing (default 30)")
    ap.add_argument("--repeats", type=int, default=3, help="timings per layout, interleaved; the best is kept")
    args = ap.parse_args()
    task = get_task("fmnist-convnet")
    victim = build_model(task)
    victim.load_state_dict(load_file(ROOT / "checkpoints" / "fmnist-convnet" / "victim.safetensors"))
    budget = draw_budget(Split.load(task.dataset, "train"), 0.05, torch.Generator().manual_seed(0), exclude_last=5000)
    best = {"channels_last": float("inf"), "contiguous": float("inf")}
    for _ in range(args.repeats):  # interleaved, so that other work on the machine weighs on both alike
        for layout in best:
            model = build_model(task)
            model.load_state_dict(victim.state_dict())
            t0 = time.perf_counter()
            anp_masks(model, budget, torch.Generator().manual_seed(0), args.steps, "cpu",
                      channels_last=layout == "channels_last")
            best[layout] = min(best[layout], (time.perf_counter() - t0) / args.steps)
    print(json.dumps({"bench": "anp-mask-step", "threads": torch.get_num_threads(), "steps": args.steps,
                      "seconds_per_step": best, "speedup_channels_last": best["contiguous"] / best["channels_last"],
                      "minutes_for_2000_steps": 2000 * best["channels_last"] / 60}))


if __name__ == "__main__":
    main()
