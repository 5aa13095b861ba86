"""Bundle, n, sampler, steps, generator -> n new train_layer vectors (de-normalised)."""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from pdiff.bundle import Bundle
from pdiff.files import write_safetensors
from pdiff.params import denormalize, layout_to_json, unflatten


@torch.no_grad()
def sample(bundle: Bundle, n: int, sampler: str = "ddpm", steps: int | None = None,
           generator: torch.Generator | None = None, device: str | torch.device = "cpu",
           progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """All n latents in one batch through the reverse chain, decoded; returns (n, P) on the CPU."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    denoiser, ae = bundle.denoiser.to(device).eval(), bundle.autoencoder.to(device).eval()
    z = bundle.diffusion.sample(denoiser, (n, *ae.latent_shape), sampler, steps, generator, device, progress)
    # undo the latent standardisation: (C, L) per latent number, or one scalar pair in older bundles
    z = z * torch.as_tensor(bundle.latent_std, device=z.device) + torch.as_tensor(bundle.latent_mean, device=z.device)
    flat = ae.decode(z).cpu()
    return denormalize(flat, bundle.norm_mean, bundle.norm_std, bundle.layout)


def sample_finite(bundle: Bundle, n: int, sampler: str = "ddpm", steps: int | None = None,
                  generator: torch.Generator | None = None, device: str | torch.device = "cpu",
                  progress: Callable[[int, int], None] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample`, plus the mask (n,) of vectors with no NaN or inf: only those are ever spliced."""
    vectors = sample(bundle, n, sampler, steps, generator, device, progress)
    return vectors, torch.isfinite(vectors).all(dim=1)


def save_samples(path: str | Path, vectors: torch.Tensor, bundle: Bundle, sampler: str, steps: int | None,
                 seed: int) -> None:
    """Write {name: (N, *shape)} as safetensors; the layout order and the sampling settings travel as metadata."""
    meta = {"format": "pdiff-samples", "task": bundle.task.name, "sampler": sampler, "seed": str(seed),
            "steps": str(steps if sampler == "ddim" else bundle.ddpm_cfg.timesteps),
            "layout": json.dumps(layout_to_json(bundle.layout))}
    write_safetensors(path, unflatten(vectors, bundle.layout), meta)
