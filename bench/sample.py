"""Sampling time: DDPM (all T steps) vs DDIM (50 steps) for N parameter sets in one batch, for the bundle's
denoiser and, in the same run, the first bundles' 128-channel, 4-block denoiser on the same latent shape
(the reference: what sampling cost before issue 12).

Prints one JSON line. Usage: python bench/sample.py [--bundle B] [--n 200] [--device auto]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pdiff.generator.bundle import Bundle  # noqa: E402
from pdiff.generator.locate import load_bundle  # noqa: E402
from pdiff.core.config import DDPMConfig  # noqa: E402
from pdiff.generator.nets import Denoiser  # noqa: E402
from pdiff.core.runtime import resolve_device  # noqa: E402
from pdiff.generator.sampling import sample  # noqa: E402


def _time(bundle: Bundle, n: int, sampler: str, steps: int | None, device: str, repeats: int) -> float:
    """Best of `repeats` wall times (the least disturbed by other work on the machine)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        sample(bundle, n, sampler, steps, torch.Generator().manual_seed(0), device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default="checkpoints/fmnist-convnet/bundle")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--ddim-steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    bundle = load_bundle(args.bundle, device)
    reference = copy.copy(bundle)  # the same bundle with the first bundles' denoiser size (timing only)
    reference.denoiser = Denoiser(bundle.autoencoder.latent_shape, DDPMConfig(channels=128, blocks=4)).to(device)
    out = {"name": "sample", "task": bundle.task.name, "device": device, "n": args.n, "threads": torch.get_num_threads(),
           "denoiser": f"{bundle.ddpm_cfg.channels}x{bundle.ddpm_cfg.blocks}", "reference_denoiser": "128x4"}
    T = bundle.ddpm_cfg.timesteps
    for name, b in (("", bundle), ("reference_", reference)):
        for sampler, steps in (("ddpm", None), ("ddim", args.ddim_steps)):
            label = f"{name}{sampler}{T if steps is None else steps}"
            out[f"{label}_s"] = round(_time(b, args.n, sampler, steps, device, args.repeats), 3)
    out["speedup_over_reference_ddpm"] = round(out[f"reference_ddpm{T}_s"] / out[f"ddpm{T}_s"], 2)
    out["ddpm_over_ddim"] = round(out[f"ddpm{T}_s"] / out[f"ddim{args.ddim_steps}_s"], 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
