"""Sampling time: DDPM (all T steps) vs DDIM (50 steps) for N parameter sets in one batch, for the bundle's
denoiser and, in the same run, the first bundles' 128-channel, 4-block denoiser on the same latent shape
(the reference: what sampling cost before issue 12). A conditional bundle is also timed guided (classifier-free
guidance: the conditional and the null prediction in one 2N batch) beside its own unconditional time; with
--signature, the time to compute a trunk signature for one target (its features on 20 images per class).

Prints one JSON line. Usage: python bench/sample.py [--bundle B] [--n 200] [--device auto] [--signature]
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
from pdiff.generator.conditions import guide_for, probe_set, signature  # noqa: E402
from pdiff.core.settings import SamplingSpec  # noqa: E402
from pdiff.data.datasets import Split  # noqa: E402


def _best(run, device: str, repeats: int) -> float:
    """Best of `repeats` wall times of run() (the least disturbed by other work on the machine)."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


def _time(bundle: Bundle, n: int, sampler: str, steps: int | None, device: str, repeats: int, guide=None) -> float:
    return _best(lambda: sample(bundle, n, sampler, steps, torch.Generator().manual_seed(0), device, guide=guide),
                 device, repeats)


def _guided(bundle: Bundle, n: int, device: str, repeats: int) -> dict:
    """A conditional bundle's DDPM time asked for its condition (acc=best, or the trunk of its own base) beside
    the same network unconditional. At scale 1: any scale above 0 costs the same (one 2N batch per step); the
    bundle's own scale may be 0, which samples unconditionally and would time nothing of the guidance."""
    condition = "acc=best" if bundle.conditions.kind == "acc" else "trunk=target"
    guide = guide_for(SamplingSpec(n, condition=condition, guidance=1.0), bundle.conditions, bundle.task, bundle.names,
                      bundle.base_state, device)
    T = bundle.ddpm_cfg.timesteps
    guided = _time(bundle, n, "ddpm", None, device, repeats, guide)
    return {"condition": condition, "guidance": guide.scale, f"guided_ddpm{T}_s": round(guided, 3)}


def _signature_time(bundle: Bundle, device: str, repeats: int) -> dict:
    """Seconds to compute one target's trunk signature: its features where the layers begin on PROBE_PER_CLASS
    training images per class (the default task's base model as the target)."""
    probe = bundle.conditions.probe if bundle.conditions is not None and bundle.conditions.probe is not None else \
        probe_set(Split.load(bundle.task.dataset, "train"))
    seconds = _best(lambda: signature(bundle.task, bundle.base_state, bundle.names, probe, device), device, repeats)
    return {"signature_s": round(seconds, 4), "signature_probe_images": len(probe.labels)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default="checkpoints/fmnist-convnet/bundle")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--ddim-steps", type=int, default=50)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--signature", action="store_true", help="also time one trunk signature (needs the training split)")
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
    if bundle.conditions is not None:
        out.update(_guided(bundle, args.n, device, args.repeats))
        out["guided_over_unconditional"] = round(out[f"guided_ddpm{T}_s"] / out[f"ddpm{T}_s"], 2)
    if args.signature:
        out.update(_signature_time(bundle, device, args.repeats))
    print(json.dumps(out))


if __name__ == "__main__":
    main()
