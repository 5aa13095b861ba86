"""A head generator that treats classes and channels as sets: a parameter diffusion model over a BatchNorm -> ReLU ->
Linear head (models.heads) whose denoiser applies one small network to every (class, channel) entry.

Why: a scratch trunk's channels come in an arbitrary order (any permutation gives the same function), so a
condition or an output tied to channel positions cannot transfer to a trunk the generator never saw. Here every
entry W[k, c] of the linear layer is predicted from that entry's own statistics on the target trunk, the class's and
the channel's, and context pooled along each axis; gamma[c], beta[c] from the channel's entries, b[k] from the
class's. Permuting the channels (or classes) of the input permutes the output the same way
(tests/test_equivariant.py); the same network serves a trunk of any channel order.

The condition (`condition`), from the target trunk's own features in its units (models.heads.standardise):
- per entry (k, c): the class's mean of the shots in the channel, the same after the ReLU, each also less the pool's
  mean of the channel;
- per channel: the unlabelled pool's mean and std, its mean after the ReLU, its share of positive values;
- per class: the mean and std over channels of the class's means, its mean after the ReLU;
- the pool's channel-by-channel correlation, through which the denoiser mixes channels (a graph over channels:
  equivariant, and what a covariance-aware rule such as LDA needs);
- 1 / sqrt(shots per class), so the network knows how noisy the class means are.
Classifier-free guidance as elsewhere: a `drop` share of training examples sees no condition (every feature zero, a
flag off), and sampling mixes null + scale * (conditional - null).

Training (`train_heads`): every head checkpoint of every training trunk is an example; at every step each example
draws its shots afresh (k from `shots`, from images kept for the generator) and one of its trunk's pools, so the
network learns from conditions as noisy as at test time. Epsilon prediction, one timestep per example, the DDPM
schedule of generator.diffusion, an EMA kept from step 0 and sampled from.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pdiff.core.files import write_json, write_safetensors
from pdiff.core.runtime import optimizer_step
from pdiff.generator.diffusion import Diffusion, Guide
from pdiff.generator.nets import timestep_embedding
from pdiff.generator.training import ema_decay
from pdiff.models.heads import HeadForm

ENTRY, CHANNEL, CLASS, GLOBAL = 4, 4, 3, 1  # condition features per entry, channel, class, and for the whole head
FORMAT, FORMAT_VERSION = "pdiff-heads", 1
CONFIG_FILE, WEIGHTS_FILE = "heads.json", "denoiser_ema.safetensors"


@dataclass(frozen=True)
class HeadGenConfig:
    """The head generator's network and training; travels with its weights."""
    width: int = 64
    depth: int = 4
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    drop: float = 0.1                                 # classifier-free guidance's condition dropout
    shots: tuple[int, ...] = (1, 2, 3, 5, 10, 20)     # shots per class drawn for each training example
    pool: int = 1000                                  # unlabelled images per condition
    pools_per_trunk: int = 4                          # pools drawn once per training trunk
    ema_decay: float = 0.999
    timesteps: int = 1000

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HeadGenConfig":
        return cls(**{**d, "shots": tuple(d.get("shots", cls.shots))})


# ---------------------------------------------------------------------------------------------- the condition

@dataclass(frozen=True)
class PoolStats:
    """What the condition takes from an unlabelled pool (M, C) of standardised features."""
    mean: torch.Tensor    # (C,)
    channel: torch.Tensor  # (C, CHANNEL)
    corr: torch.Tensor    # (C, C)

    @classmethod
    def of(cls, pool: torch.Tensor) -> "PoolStats":
        pool = pool.float()
        mean, std = pool.mean(0), pool.std(0)
        channel = torch.stack([mean, std, pool.relu().mean(0), (pool > 0).float().mean(0)], 1)
        z = (pool - mean) / std.clamp(min=1e-6)
        return cls(mean, channel, (z.T @ z) / (len(pool) - 1))


def condition(shots: torch.Tensor, labels: torch.Tensor, pool: PoolStats | torch.Tensor, classes: int) -> torch.Tensor:
    """The flat condition (D,) of one trunk from its standardised features of the shots (n, C) with their labels,
    and its pool (M, C) or the pool's PoolStats."""
    stats = pool if isinstance(pool, PoolStats) else PoolStats.of(pool)
    shots = shots.float()
    onehot = F.one_hot(labels, classes).float()                       # (n, K)
    count = onehot.sum(0)
    if (count == 0).any():
        raise ValueError(f"every class needs a shot; classes {count.eq(0).nonzero().flatten().tolist()} have none")
    z = onehot.T @ shots / count[:, None]                             # (K, C) class means
    r = onehot.T @ shots.relu() / count[:, None]
    entry = torch.stack([z, r, z - stats.mean, r - stats.channel[:, 2]], -1)       # (K, C, ENTRY)
    klass = torch.stack([z.mean(1), z.std(1), r.mean(1)], -1)                      # (K, CLASS)
    glob = torch.tensor([1.0 / math.sqrt(count.min().item())])
    return torch.cat([entry.flatten(), stats.channel.flatten(), klass.flatten(), stats.corr.flatten(), glob])


def condition_dim(classes: int, channels: int) -> int:
    return classes * channels * ENTRY + channels * CHANNEL + classes * CLASS + channels * channels + GLOBAL


def _unpack_condition(cond: torch.Tensor, classes: int, channels: int):
    b, k, c = len(cond), classes, channels
    sizes = [k * c * ENTRY, c * CHANNEL, k * CLASS, c * c, GLOBAL]
    entry, channel, klass, corr, glob = torch.split(cond, sizes, dim=1)
    return (entry.view(b, k, c, ENTRY), channel.view(b, c, CHANNEL), klass.view(b, k, CLASS), corr.view(b, c, c),
            glob)


def permute_condition(cond: torch.Tensor, classes: int, channels: int, class_perm: torch.Tensor,
                      channel_perm: torch.Tensor) -> torch.Tensor:
    """The condition of the same trunk with its classes and channels reordered (class_perm[i]: the old index of
    new class i)."""
    entry, channel, klass, corr, glob = _unpack_condition(cond, classes, channels)
    entry = entry[:, class_perm][:, :, channel_perm]
    corr = corr[:, channel_perm][:, :, channel_perm]
    return torch.cat([entry.flatten(1), channel[:, channel_perm].flatten(1), klass[:, class_perm].flatten(1),
                      corr.flatten(1), glob], 1)


# ---------------------------------------------------------------------------------------------- heads as vectors

def pack_heads(heads: dict[str, torch.Tensor], form: HeadForm) -> torch.Tensor:
    """{name: (B, *shape)} -> (B, P) in the layout's order (gamma, beta, weight row by row, bias)."""
    return torch.cat([heads[n].float().flatten(1) for n in form.names], 1)


def unpack_heads(x: torch.Tensor, form: HeadForm) -> dict[str, torch.Tensor]:
    k, c = form.classes, form.channels
    g, b, w, bias = torch.split(x, [c, c, k * c, k], dim=1)
    return dict(zip(form.names, (g, b, w.reshape(-1, k, c), bias)))


def permute_heads(x: torch.Tensor, form: HeadForm, class_perm: torch.Tensor, channel_perm: torch.Tensor) -> torch.Tensor:
    g, b, w, bias = unpack_heads(x, form).values()
    return pack_heads(dict(zip(form.names, (g[:, channel_perm], b[:, channel_perm],
                                            w[:, class_perm][:, :, channel_perm], bias[:, class_perm]))), form)


@dataclass(frozen=True)
class HeadScale:
    """One mean and one std per kind of number (gamma, beta, weight, bias): scalars, so the scaling keeps the
    permutation symmetry."""
    mean: tuple[float, float, float, float]
    std: tuple[float, float, float, float]

    @classmethod
    def fit(cls, x: torch.Tensor, form: HeadForm) -> "HeadScale":
        parts = unpack_heads(x, form).values()
        return cls(tuple(p.mean().item() for p in parts), tuple(p.std().item() for p in parts))

    def _apply(self, x: torch.Tensor, form: HeadForm, forward: bool) -> torch.Tensor:
        out = {}
        for (name, p), m, s in zip(unpack_heads(x, form).items(), self.mean, self.std):
            out[name] = (p - m) / s if forward else p * s + m
        return pack_heads(out, form)

    def normalise(self, x: torch.Tensor, form: HeadForm) -> torch.Tensor:
        return self._apply(x, form, True)

    def restore(self, x: torch.Tensor, form: HeadForm) -> torch.Tensor:
        return self._apply(x, form, False)


# ---------------------------------------------------------------------------------------------- the network

class _Exchange(nn.Module):
    """One layer over (B, K, C, d) entries: each entry's own state, its means over classes, over channels and over
    both, and its class's row mixed over channels by the pool's correlation; a residual MLP."""

    def __init__(self, d: int):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.own, self.over_k, self.over_c, self.over_all, self.mixed = (nn.Linear(d, d) for _ in range(5))
        self.time = nn.Linear(d, d)
        self.out = nn.Linear(d, d)

    def forward(self, h: torch.Tensor, mix: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        n = self.norm(h)
        a = (self.own(n) + self.over_k(n.mean(1, keepdim=True)) + self.over_c(n.mean(2, keepdim=True))
             + self.over_all(n.mean((1, 2), keepdim=True)) + self.mixed(torch.einsum("bce,bked->bkcd", mix, n))
             + self.time(temb)[:, None, None])
        return h + self.out(F.gelu(a))


class EquivariantDenoiser(nn.Module):
    """(B, P) noisy normalised heads, (B,) timesteps, (B, D) conditions, (B,) keep flags -> (B, P) noise."""

    def __init__(self, form: HeadForm, cfg: HeadGenConfig):
        super().__init__()
        self.form, d = form, cfg.width
        self.inp = nn.Linear(4 + ENTRY + CHANNEL + CLASS + GLOBAL + 1, d)
        self.temb = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, d))
        self.layers = nn.ModuleList(_Exchange(d) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(d)
        self.out_weight = nn.Linear(d, 1)
        self.out_channel = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 2))
        self.out_class = nn.Sequential(nn.Linear(d, d), nn.SiLU(), nn.Linear(d, 1))
        self.width = d

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None = None,
                keep: torch.Tensor | None = None) -> torch.Tensor:
        k, c = self.form.classes, self.form.channels
        b = len(x)
        g, beta, w, bias = unpack_heads(x, self.form).values()
        if cond is None:
            cond = x.new_zeros(b, condition_dim(k, c))
            keep = torch.zeros(b, dtype=torch.bool, device=x.device)
        elif keep is None:
            keep = torch.ones(b, dtype=torch.bool, device=x.device)
        flag = keep.to(x.dtype)
        cond = cond * flag[:, None]  # the null condition: every feature zero, the flag off
        entry, channel, klass, corr, glob = _unpack_condition(cond, k, c)
        inputs = torch.cat([
            w[..., None], g[:, None, :, None].expand(b, k, c, 1), beta[:, None, :, None].expand(b, k, c, 1),
            bias[:, :, None, None].expand(b, k, c, 1), entry, channel[:, None].expand(b, k, c, CHANNEL),
            klass[:, :, None].expand(b, k, c, CLASS), glob[:, None, None].expand(b, k, c, GLOBAL),
            flag[:, None, None, None].expand(b, k, c, 1)], -1)
        h = self.inp(inputs)
        temb = self.temb(timestep_embedding(t, self.width))
        mix = corr / c
        for layer in self.layers:
            h = layer(h, mix, temb)
        h = self.norm(h)
        eps_w = self.out_weight(h)[..., 0]                  # (B, K, C)
        eps_gb = self.out_channel(h.mean(1))                # (B, C, 2)
        eps_b = self.out_class(h.mean(2))[..., 0]           # (B, K)
        return pack_heads(dict(zip(self.form.names, (eps_gb[..., 0], eps_gb[..., 1], eps_w, eps_b))), self.form)


# ---------------------------------------------------------------------------------------------- training

@dataclass
class TrunkExamples:
    """One training trunk: its standardised features of the generator's own images (shot candidates with labels,
    pool candidates) and its head checkpoints (n, P) in the layout's order."""
    shots: torch.Tensor
    labels: torch.Tensor
    pool: torch.Tensor
    heads: torch.Tensor
    name: str = ""


@dataclass
class HeadGenerator:
    """A trained head generator: the EMA denoiser, its config, the head scaling, and what it was trained on."""
    form: HeadForm
    cfg: HeadGenConfig
    scale: HeadScale
    denoiser: EquivariantDenoiser
    meta: dict = field(default_factory=dict)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor | None, n: int, generator: torch.Generator, guidance: float = 1.0,
               sampler: str = "ddim", steps: int | None = 50) -> dict[str, torch.Tensor]:
        """n heads {name: (n, *shape)} for one condition (D,) (None: unconditional), DDIM-`steps` or DDPM."""
        diffusion = Diffusion(self.cfg.timesteps)
        guide = None if cond is None else Guide(cond.float()[None].expand(n, -1), guidance)
        x = diffusion.sample(self.denoiser.eval(), (n, numel(self.form)), sampler, steps, generator, guide=guide)
        return unpack_heads(self.scale.restore(x, self.form), self.form)

    def save(self, folder: str | Path) -> None:
        """heads.json (format, form, config, scaling, meta) and the EMA denoiser's weights."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_safetensors(folder / WEIGHTS_FILE, self.denoiser.state_dict(), {"format": FORMAT})
        write_json(folder / CONFIG_FILE, {"format": FORMAT, "format_version": FORMAT_VERSION,
                                          "form": asdict(self.form), "config": self.cfg.to_dict(),
                                          "scale": asdict(self.scale), "meta": self.meta})

    @classmethod
    def load(cls, folder: str | Path) -> "HeadGenerator":
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"{folder} is not a head generator: {CONFIG_FILE} is missing")
        d = json.loads((folder / CONFIG_FILE).read_text())
        if d.get("format") != FORMAT:
            raise ValueError(f"{folder / CONFIG_FILE} is not a {FORMAT} file (format {d.get('format')!r})")
        form, cfg = HeadForm(**d["form"]), HeadGenConfig.from_dict(d["config"])
        net = EquivariantDenoiser(form, cfg)
        net.load_state_dict(load_file(folder / WEIGHTS_FILE))
        scale = HeadScale(tuple(d["scale"]["mean"]), tuple(d["scale"]["std"]))
        return cls(form, cfg, scale, net.eval().requires_grad_(False), d.get("meta", {}))


def numel(form: HeadForm) -> int:
    return 2 * form.channels + form.classes * form.channels + form.classes


def _draw_shots(ex: TrunkExamples, k: int, classes: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    idx = []
    for c in range(classes):
        of_class = (ex.labels == c).nonzero().squeeze(1)
        idx.append(of_class[torch.randperm(len(of_class), generator=generator)[:k]])
    idx = torch.cat(idx)
    return ex.shots[idx], ex.labels[idx]


def train_heads(trunks: list[TrunkExamples], form: HeadForm, cfg: HeadGenConfig, generator: torch.Generator,
                log=None) -> HeadGenerator:
    """Fit the equivariant denoiser on every head of `trunks`, the shots redrawn at every step."""
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
        net = EquivariantDenoiser(form, cfg)
    ema = copy.deepcopy(net).requires_grad_(False)
    scale = HeadScale.fit(torch.cat([t.heads for t in trunks]), form)
    heads = [scale.normalise(t.heads.float(), form) for t in trunks]
    pools = [[PoolStats.of(t.pool[torch.randperm(len(t.pool), generator=generator)[:cfg.pool]])
              for _ in range(cfg.pools_per_trunk)] for t in trunks]
    diffusion = Diffusion(cfg.timesteps)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.lr * 0.1)
    losses = []
    for step in range(cfg.steps):
        x0, conds = [], []
        for _ in range(cfg.batch_size):
            ti = int(torch.randint(len(trunks), (1,), generator=generator))
            hi = int(torch.randint(len(heads[ti]), (1,), generator=generator))
            k = cfg.shots[int(torch.randint(len(cfg.shots), (1,), generator=generator))]
            shots, labels = _draw_shots(trunks[ti], k, form.classes, generator)
            pool = pools[ti][int(torch.randint(cfg.pools_per_trunk, (1,), generator=generator))]
            x0.append(heads[ti][hi])
            conds.append(condition(shots, labels, pool, form.classes))
        loss = diffusion.loss(net, torch.stack(x0), generator, guide=Guide(torch.stack(conds), drop=cfg.drop))
        optimizer_step(loss, opt, sched)
        with torch.no_grad():
            decay = ema_decay(step, cfg.ema_decay)
            for e, p in zip(ema.parameters(), net.parameters()):
                e.lerp_(p, 1 - decay)
        losses.append(loss.item())
        if log is not None and (step % 100 == 0 or step == cfg.steps - 1):
            log(step, sum(losses[-100:]) / len(losses[-100:]))
    meta = {"trunks": [t.name for t in trunks], "heads": sum(len(h) for h in heads),
            "loss_last_100": sum(losses[-100:]) / len(losses[-100:])}
    return HeadGenerator(form, cfg, scale, ema.eval(), meta)
