"""Bundle, n, sampler, steps, generator -> n new train_layer vectors (de-normalised)."""
from __future__ import annotations

from collections.abc import Callable

import torch

from pdiff.bundle import Bundle
from pdiff.params import denormalize


@torch.no_grad()
def sample(bundle: Bundle, n: int, sampler: str = "ddpm", steps: int | None = None,
           generator: torch.Generator | None = None, device: str | torch.device = "cpu",
           progress: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """All n latents in one batch through the reverse chain, decoded; returns (n, P) on the CPU."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    denoiser, ae = bundle.denoiser.to(device).eval(), bundle.autoencoder.to(device).eval()
    z = bundle.diffusion.sample(denoiser, (n, *ae.latent_shape), sampler, steps, generator, device, progress)
    z = z * bundle.latent_std + bundle.latent_mean  # undo the latent standardisation
    flat = ae.decode(z).cpu()
    return denormalize(flat, bundle.norm_mean, bundle.norm_std, bundle.layout)
