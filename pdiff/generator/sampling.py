"""A bundle and a SamplingSpec -> n new train_layer vectors (de-normalised), as `Samples`."""
from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from pdiff.core.files import write_safetensors
from pdiff.core.params import layout_to_json, unflatten
from pdiff.core.settings import SamplingSpec
from pdiff.generator.bundle import Bundle
from pdiff.generator.conditions import guide_for, resolve
from pdiff.generator.diffusion import Guide

SAMPLES_FILE = "samples.safetensors"  # a folder given to Samples.save gets this file
Progress = Callable[[int, int], None]


@torch.no_grad()
def sample(bundle: Bundle, n: int, sampler: str = "ddpm", steps: int | None = None,
           generator: torch.Generator | None = None, device: str | torch.device = "cpu",
           progress: Progress | None = None, guide: Guide | None = None) -> torch.Tensor:
    """All n latents in one batch through the reverse chain (guided by `guide`'s condition), decoded; returns (n, P)
    on the CPU."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    denoiser, ae = bundle.denoiser.to(device).eval(), bundle.autoencoder.to(device).eval()
    z = bundle.diffusion.sample(denoiser, (n, *ae.latent_shape), sampler, steps, generator, device, progress, guide)
    # undo the latent standardisation: (C, L) per latent number, or one scalar pair in older bundles
    flat = ae.decode(bundle.normaliser.latents_out(z)).cpu()
    return bundle.normaliser.denormalise(flat, bundle.layout)


@dataclass
class Samples:
    """n generated parameter vectors (n, P) in the bundle's layout, and how they were drawn."""
    vectors: torch.Tensor
    spec: SamplingSpec
    bundle: Bundle

    @property
    def finite(self) -> torch.Tensor:
        """(n,) True for the vectors with no NaN or inf: only those are ever spliced."""
        return torch.isfinite(self.vectors).all(dim=1)

    def params(self) -> dict[str, torch.Tensor]:
        """{name: (n, *shape)}: what goes into a model's state dict."""
        return unflatten(self.vectors, self.bundle.layout)

    def save(self, path: str | Path) -> Path:
        """Write {name: (n, *shape)} as safetensors to `path` (a .safetensors file, or a folder that gets
        samples.safetensors); the layout order and the sampling settings travel as metadata."""
        path = Path(path)
        path = path if path.suffix == ".safetensors" else path / SAMPLES_FILE
        s = self.spec
        meta = {"format": "pdiff-samples", "task": self.bundle.task.name, "sampler": s.sampler, "seed": str(s.seed),
                "steps": str(s.chain_steps(self.bundle.ddpm_cfg.timesteps)), "condition": str(s.condition),
                "layout": json.dumps(layout_to_json(self.bundle.layout))}
        write_safetensors(path, self.params(), meta)
        return path


def draw(bundle: Bundle, spec: SamplingSpec, device: str | torch.device = "cpu", progress: Progress | None = None,
         target_state: dict | None = None) -> Samples:
    """spec.n sets from the bundle, drawn from spec.seed's generator, with spec.condition (trunk=target: the
    signature of `target_state`, the model the sets go into); the Samples' spec names the condition asked
    ("default" resolved)."""
    spec = resolve(spec, bundle.conditions)
    guide = guide_for(spec, bundle.conditions, bundle.task, bundle.names, target_state, device)
    vectors = sample(bundle, spec.n, spec.sampler, spec.steps, spec.generator(), device, progress, guide)
    return Samples(vectors, spec, bundle)
