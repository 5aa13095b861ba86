"""Sampling time: DDPM (all T steps) vs DDIM (50 steps) for N parameter sets in one batch.

Prints one JSON line. Usage: python bench/sample.py [--bundle B] [--n 200] [--device auto]
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
from pdiff.sample import sample  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default="checkpoints/fmnist-convnet/bundle")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--ddim-steps", type=int, default=50)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    bundle = Bundle.load(args.bundle, device)
    out = {"name": "sample", "task": bundle.task.name, "device": device, "n": args.n}
    for sampler, steps in (("ddpm", None), ("ddim", args.ddim_steps)):
        t0 = time.perf_counter()
        sample(bundle, args.n, sampler, steps, torch.Generator().manual_seed(0), device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        s = time.perf_counter() - t0
        label = f"{sampler}{bundle.ddpm_cfg.timesteps if steps is None else steps}"
        out[f"{label}_s"] = round(s, 3)
        out[f"{label}_ms_per_model"] = round(1000 * s / args.n, 3)
    out["ddpm_over_ddim"] = round(out[f"ddpm{bundle.ddpm_cfg.timesteps}_s"] / out[f"ddim{args.ddim_steps}_s"], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
