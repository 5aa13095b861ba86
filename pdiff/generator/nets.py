"""Networks only: the parameter autoencoder and the latent 1D-conv denoiser."""
from __future__ import annotations

import math

import torch
from torch import nn

from pdiff.core.config import AEConfig, DDPMConfig


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c)


class ParamAutoencoder(nn.Module):
    """Flat parameter vector (B, P) <-> latent (B, latent_channels, L).

    The vector is zero-padded and folded into `fold` channels, then strided 1D convolutions
    shrink the length by 2 per stage. Training adds noise to the input and to the latent
    (p-diff section 3: both are needed for generation to work).
    """

    def __init__(self, num_params: int, cfg: AEConfig):
        super().__init__()
        if cfg.fold < 1:
            raise ValueError("AEConfig.fold must be resolved (auto_fold) before building the autoencoder")
        self.num_params, self.fold = num_params, cfg.fold
        down = 2 ** len(cfg.channels)
        self.length = math.ceil(math.ceil(num_params / cfg.fold) / down) * down
        self.latent_shape = (cfg.latent_channels, self.length // down)
        chans = list(cfg.channels)
        enc: list[nn.Module] = [nn.Conv1d(cfg.fold, chans[0], 3, padding=1)]
        for c_in, c_out in zip(chans, chans[1:] + chans[-1:]):
            enc += [_norm(c_in), nn.LeakyReLU(0.2), nn.Conv1d(c_in, c_out, 4, stride=2, padding=1)]
        enc += [_norm(chans[-1]), nn.LeakyReLU(0.2), nn.Conv1d(chans[-1], cfg.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        rev = chans[::-1]
        dec: list[nn.Module] = [nn.Conv1d(cfg.latent_channels, rev[0], 3, padding=1)]
        for c_in, c_out in zip(rev, rev[1:] + rev[-1:]):
            dec += [_norm(c_in), nn.LeakyReLU(0.2), nn.ConvTranspose1d(c_in, c_out, 4, stride=2, padding=1)]
        dec += [_norm(rev[-1]), nn.LeakyReLU(0.2), nn.Conv1d(rev[-1], cfg.fold, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.fold * self.length - self.num_params
        x = nn.functional.pad(x, (0, pad)).view(len(x), self.fold, self.length)
        return self.encoder(x)  # B, latent_channels, L

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).reshape(len(z), -1)[:, : self.num_params]  # B, P

    def forward(self, x: torch.Tensor, latent_noise: torch.Tensor | None = None) -> torch.Tensor:
        """A reconstruction, with `latent_noise` added to the latent (training; DistributedDataParallel wraps this)."""
        z = self.encode(x)
        return self.decode(z if latent_noise is None else z + latent_noise)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps (B,) -> (B, dim)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class _ResBlock(nn.Module):
    def __init__(self, channels: int, emb_dim: int, dilation: int):
        super().__init__()
        self.norm1, self.norm2 = _norm(channels), _norm(channels)
        self.conv1 = nn.Conv1d(channels, channels, 3, padding=dilation, dilation=dilation)
        self.conv2 = nn.Conv1d(channels, channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, channels)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        h = h + self.emb(emb)[:, :, None]  # the timestep enters every block as a channel bias
        h = self.conv2(self.act(self.norm2(h)))
        return x + h


class Denoiser(nn.Module):
    """epsilon-prediction network on latents (B, C, L) with a time embedding; dilated 1D convs."""

    def __init__(self, latent_shape: tuple[int, int], cfg: DDPMConfig):
        super().__init__()
        c_lat, _ = latent_shape
        ch, emb_dim = cfg.channels, cfg.channels * 2
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.inp = nn.Conv1d(c_lat, ch, 3, padding=1)
        self.blocks = nn.ModuleList(_ResBlock(ch, emb_dim, 2 ** (i % 3)) for i in range(cfg.blocks))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv1d(ch, c_lat, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)  # start by predicting zero noise: a stable first step
        nn.init.zeros_(self.out[-1].bias)
        self.channels = ch
        if cfg.condition_dim:  # the condition enters beside the timestep; `null` stands for "no condition"
            self.cond_mlp = nn.Sequential(nn.Linear(cfg.condition_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            self.null = nn.Parameter(torch.zeros(emb_dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C, L), t (B,); a conditional network also takes cond (B, condition_dim) and keep (B,) bool: which
        samples see their condition (the others, and all without `cond`, see the null condition)."""
        emb = self.time_mlp(timestep_embedding(t, self.channels))
        if hasattr(self, "cond_mlp"):
            null = self.null.expand(len(x), -1)
            emb = emb + (null if cond is None else torch.where(keep[:, None], self.cond_mlp(cond), null))
        h = self.inp(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.out(h)
