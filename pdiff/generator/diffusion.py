"""The noise schedule and the DDPM / DDIM steps; knows betas, not layers (no nn.Module).

Notation follows Ho et al. 2020 (DDPM) and Song et al. 2021 (DDIM), which p-diff uses
unchanged on autoencoder latents: epsilon prediction, linear betas, T = 1000.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from pdiff.core.settings import SAMPLERS


@dataclass(frozen=True)
class Guide:
    """A condition for each sample (cond, (B, dim), standardised); the guidance scale when sampling, the share of
    samples that see the null condition instead when training (classifier-free guidance's condition dropout)."""
    cond: torch.Tensor
    scale: float = 1.0
    drop: float = 0.0

    def guided(self, denoiser: Callable, n: int, device) -> Callable:
        """The guided noise prediction, from one call of the denoiser on a batch of 2n (conditional, then null)."""
        cond = torch.cat([self.cond, self.cond]).to(device)
        keep = torch.cat([torch.ones(n, dtype=torch.bool), torch.zeros(n, dtype=torch.bool)]).to(device)

        def eps(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            both = denoiser(torch.cat([x, x]), torch.cat([t, t]), cond, keep)
            conditional, null = both[:n], both[n:]
            return null + self.scale * (conditional - null)
        return eps


class Diffusion:
    def __init__(self, timesteps: int = 1000, beta_start: float = 1e-4, beta_end: float = 2e-2):
        if timesteps < 1:
            raise ValueError(f"timesteps must be at least 1, got {timesteps}")
        self.T = timesteps
        self.betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
        self.alphas = 1.0 - self.betas
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)
        self._abar = self.alphas_cumprod.tolist()  # python floats for the reverse steps: no tensor indexing per step

    def _at(self, values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """values[t] shaped to broadcast against `like` (one value per sample)."""
        out = values.to(like.device)[t].to(like.dtype)
        return out.view(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Forward process: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (DDPM eq. 4)."""
        abar = self._at(self.alphas_cumprod, t, x0)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def loss(self, denoiser: Callable, x0: torch.Tensor, generator: torch.Generator,
             rows: torch.Tensor | None = None, guide: Guide | None = None) -> torch.Tensor:
        """Simple epsilon-MSE loss (DDPM eq. 14), one random timestep per sample. `rows`: the samples this process
        trains on, drawn for the whole batch first, so that ranks sharing a batch draw what one process draws.
        `guide`: each sample's condition (guide.cond, (B, dim)); a guide.drop share of them, drawn at random, see the
        null condition instead."""
        t = torch.randint(0, self.T, (len(x0),), generator=generator, device=generator.device).to(x0.device)
        noise = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
        extra = ()
        if guide is not None:
            keep = torch.rand(len(x0), generator=generator, device=generator.device).to(x0.device) >= guide.drop
            extra = (guide.cond.to(x0.device), keep)
        if rows is not None:
            x0, t, noise, extra = x0[rows], t[rows], noise[rows], tuple(e[rows] for e in extra)
        return F.mse_loss(denoiser(self.q_sample(x0, t, noise), t, *extra), noise)

    def timesteps(self, sampler: str = "ddpm", steps: int | None = None) -> Iterator[tuple[int, int]]:
        """(t, t_prev) pairs from T-1 down to 0; t_prev = -1 marks the last step."""
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}; use one of {', '.join(SAMPLERS)}")
        if sampler == "ddpm":
            seq = list(range(self.T - 1, -1, -1))
        else:
            steps = self.T if steps is None else steps
            if not 1 <= steps <= self.T:
                raise ValueError(f"DDIM steps must be between 1 and {self.T}, got {steps}")
            seq = torch.linspace(self.T - 1, 0, steps).round().long().unique_consecutive().tolist()
        yield from zip(seq, seq[1:] + [-1])

    def step(self, eps: torch.Tensor, t: int, t_prev: int, x: torch.Tensor, sampler: str = "ddpm",
             generator: torch.Generator | None = None) -> torch.Tensor:
        """One reverse step from x_t to x_{t_prev} given the predicted noise."""
        abar = self._abar[t]
        abar_prev = self._abar[t_prev] if t_prev >= 0 else 1.0
        if sampler == "ddim":
            # DDIM eq. 12 with eta = 0: deterministic given x_T
            x0 = (x - (1 - abar) ** 0.5 * eps) / abar ** 0.5
            return abar_prev ** 0.5 * x0 + (1 - abar_prev) ** 0.5 * eps
        # DDPM eq. 11 with sigma_t^2 = beta_tilde (the posterior variance)
        beta = 1 - abar / abar_prev
        mean = (x - beta / (1 - abar) ** 0.5 * eps) / (1 - beta) ** 0.5
        if t_prev < 0:
            return mean
        var = beta * (1 - abar_prev) / (1 - abar)
        noise = torch.randn(x.shape, generator=generator,
                            device=generator.device if generator is not None else x.device).to(x.device)
        return mean + var ** 0.5 * noise

    @torch.no_grad()
    def sample(self, denoiser: Callable, shape: tuple[int, ...], sampler: str = "ddpm", steps: int | None = None,
               generator: torch.Generator | None = None, device: str | torch.device = "cpu",
               progress: Callable[[int, int], None] | None = None, guide: Guide | None = None) -> torch.Tensor:
        """Run the whole reverse chain for a batch of `shape[0]` samples; with `guide`, classifier-free guidance:
        eps = eps(null) + scale * (eps(cond) - eps(null)), so scale 0 is the unconditional model and 1 the plain
        conditional one (Ho & Salimans 2022). Both predictions come from one batch of 2N: twice the work at most."""
        gen_device = generator.device if generator is not None else "cpu"
        x = torch.randn(shape, generator=generator, device=gen_device).to(device)
        pairs = list(self.timesteps(sampler, steps))
        t_batch = torch.empty(shape[0], device=device, dtype=torch.long)
        eps = denoiser if guide is None or guide.scale == 0 else guide.guided(denoiser, shape[0], device)
        for i, (t, t_prev) in enumerate(pairs):
            x = self.step(eps(x, t_batch.fill_(t)), t, t_prev, x, sampler, generator)
            if progress is not None:
                progress(i + 1, len(pairs))
        return x
