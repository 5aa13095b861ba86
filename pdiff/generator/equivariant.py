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
- the pool's channel-by-channel correlation (its top RANK eigenpairs), through which the denoiser mixes channels (a
  graph over channels: equivariant, and what a covariance-aware rule such as LDA needs);
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
REFINE_ROUNDS = 3
RANK = 16  # the pool's correlation enters through its top RANK eigenvectors (C x RANK: 8x cheaper than C x C)
FORMAT, FORMAT_VERSION = "pdiff-heads", 1
CONFIG_FILE, WEIGHTS_FILE = "heads.json", "denoiser_ema.safetensors"


@dataclass(frozen=True)
class HeadGenConfig:
    """The head generator's network, condition and training; travels with its weights."""
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
    refine: bool = False     # the condition also reads class means refined on the pool (k-means from the shots')
    prior: str = "none"      # "matched": the condition reads, and the diffusion generates the residual from, the
                             # average of the training trunks' own heads with channels matched on the pool
    quality: bool = False    # with a prior: each channel's mean correlation with the donor channels matched to it

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "HeadGenConfig":
        return cls(**{**d, "shots": tuple(d.get("shots", cls.shots))})


# ---------------------------------------------------------------------------------------------- the condition

@dataclass(frozen=True)
class CondShape:
    """How many condition features each entry, channel and class gets, and the flat condition's layout."""
    classes: int
    channels: int
    refine: bool = False
    prior: bool = False
    quality: bool = False

    @classmethod
    def of(cls, form: HeadForm, cfg: HeadGenConfig) -> "CondShape":
        if cfg.prior not in ("none", "matched"):
            raise ValueError(f"HeadGenConfig.prior must be 'none' or 'matched', got {cfg.prior!r}")
        if cfg.quality and cfg.prior == "none":
            raise ValueError("HeadGenConfig.quality describes a prior's matches: it needs prior 'matched'")
        return cls(form.classes, form.channels, cfg.refine, cfg.prior == "matched", cfg.quality)

    @property
    def entry(self) -> int:
        return ENTRY + 2 * self.refine + self.prior

    @property
    def channel(self) -> int:
        return CHANNEL + 2 * self.prior + self.quality

    @property
    def klass(self) -> int:
        return CLASS + self.prior

    @property
    def dim(self) -> int:
        k, c = self.classes, self.channels
        return k * c * self.entry + c * self.channel + k * self.klass + c * RANK + GLOBAL

    def unpack(self, cond: torch.Tensor):
        """(B, D) -> entry (B, K, C, e), channel (B, C, c), class (B, K, k), mix (B, C, RANK), global (B, 1)."""
        b, k, c = len(cond), self.classes, self.channels
        sizes = [k * c * self.entry, c * self.channel, k * self.klass, c * RANK, GLOBAL]
        entry, channel, klass, mix, glob = torch.split(cond, sizes, dim=1)
        return (entry.view(b, k, c, self.entry), channel.view(b, c, self.channel), klass.view(b, k, self.klass),
                mix.view(b, c, RANK), glob)

    def permute(self, cond: torch.Tensor, class_perm: torch.Tensor, channel_perm: torch.Tensor) -> torch.Tensor:
        """The condition of the same trunk with its classes and channels reordered (class_perm[i]: the old index
        of new class i)."""
        entry, channel, klass, mix, glob = self.unpack(cond)
        entry = entry[:, class_perm][:, :, channel_perm]
        return torch.cat([entry.flatten(1), channel[:, channel_perm].flatten(1), klass[:, class_perm].flatten(1),
                          mix[:, channel_perm].flatten(1), glob], 1)


@dataclass(frozen=True)
class PoolStats:
    """What the condition takes from an unlabelled pool (M, C) of standardised features."""
    pool: torch.Tensor     # (M, C)
    mean: torch.Tensor     # (C,)
    channel: torch.Tensor  # (C, CHANNEL)
    mix: torch.Tensor      # (C, RANK): V sqrt(lambda / C) of the top eigenpairs of the correlation; mix @ mix.T
                           # approximates corr / C, the same for either sign of an eigenvector

    @classmethod
    def of(cls, pool: torch.Tensor) -> "PoolStats":
        pool = pool.float()
        mean, std = pool.mean(0), pool.std(0)
        channel = torch.stack([mean, std, pool.relu().mean(0), (pool > 0).float().mean(0)], 1)
        z = (pool - mean) / std.clamp(min=1e-6)
        values, vectors = torch.linalg.eigh((z.T @ z).double() / (len(pool) - 1))
        top = values.flip(0)[:RANK].clamp(min=0)
        mix = (vectors.flip(1)[:, :RANK] * (top / len(mean)).sqrt()).float()
        return cls(pool, mean, channel, F.pad(mix, (0, RANK - mix.shape[1])))  # fewer channels than RANK: zeros


def refined_means(shots: torch.Tensor, labels: torch.Tensor, pool: torch.Tensor, classes: int,
                  rounds: int = REFINE_ROUNDS) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means refined on the unlabelled pool: k-means started from the shots' class means, each round every
    pool image joins its nearest mean and the means are recomputed over the shots and the pool images they hold.
    Returns (means (K, C), each pool image's class (M,))."""
    onehot = F.one_hot(labels, classes).float()
    means = onehot.T @ shots / onehot.sum(0)[:, None]
    assigned = torch.cdist(pool, means).argmin(1)
    for _ in range(rounds):
        hard = F.one_hot(assigned, classes).float()
        means = (onehot.T @ shots + hard.T @ pool) / (onehot.sum(0) + hard.sum(0))[:, None]
        assigned = torch.cdist(pool, means).argmin(1)
    return means, assigned


def condition(shots: torch.Tensor, labels: torch.Tensor, pool: PoolStats | torch.Tensor, shape: CondShape,
              prior: torch.Tensor | None = None) -> torch.Tensor:
    """The flat condition (D,) of one trunk from its standardised features of the shots (n, C) with their labels,
    its pool (M, C) or the pool's PoolStats, and (shape.prior) a head (P,), normalised, to read (followed, with
    shape.quality, by each channel's match quality (C,))."""
    stats = pool if isinstance(pool, PoolStats) else PoolStats.of(pool)
    shots, classes = shots.float(), shape.classes
    onehot = F.one_hot(labels, classes).float()                       # (n, K)
    count = onehot.sum(0)
    if (count == 0).any():
        raise ValueError(f"every class needs a shot; classes {count.eq(0).nonzero().flatten().tolist()} have none")
    z = onehot.T @ shots / count[:, None]                             # (K, C) class means
    r = onehot.T @ shots.relu() / count[:, None]
    entry = [z, r, z - stats.mean, r - stats.channel[:, 2]]
    channel, klass = [stats.channel], [z.mean(1, keepdim=True), z.std(1, keepdim=True), r.mean(1, keepdim=True)]
    if shape.refine:
        means, assigned = refined_means(shots, labels, stats.pool, classes)
        hard = F.one_hot(assigned, classes).float()
        relu_means = (onehot.T @ shots.relu() + hard.T @ stats.pool.relu()) / (count + hard.sum(0))[:, None]
        entry += [means, relu_means]
    if shape.prior:
        if prior is None:
            raise ValueError("this head generator reads a prior head (prior='matched'); none was given")
        c = shape.channels
        g, b, w, bias, quality = torch.split(prior.float(), [c, c, classes * c, classes, c * shape.quality])
        entry.append(w.view(classes, c))
        channel += [g[:, None], b[:, None]] + ([quality[:, None]] if shape.quality else [])
        klass.append(bias[:, None])
    glob = torch.tensor([1.0 / math.sqrt(count.min().item())])
    return torch.cat([torch.stack(entry, -1).flatten(), torch.cat(channel, 1).flatten(), torch.cat(klass, 1).flatten(),
                      stats.mix.flatten(), glob])


def match_channels(pool: torch.Tensor, donor_pool: torch.Tensor) -> torch.Tensor:
    """For each channel of a trunk, the donor's channel it is matched to: the one-to-one assignment that maximises
    the summed correlation of the two trunks' features of the same pool images (Hungarian)."""
    return _match(pool, donor_pool)[0]


def _match(pool: torch.Tensor, donor_pool: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the donor's channel for each channel, the correlation of each matched pair)."""
    from scipy.optimize import linear_sum_assignment

    a = (pool - pool.mean(0)) / pool.std(0).clamp(min=1e-6)
    b = (donor_pool - donor_pool.mean(0)) / donor_pool.std(0).clamp(min=1e-6)
    corr = a.T @ b / max(len(pool) - 1, 1)
    rows, cols = linear_sum_assignment(-corr.double().numpy())
    channel_of = torch.as_tensor(cols)[torch.as_tensor(rows).argsort()]
    return channel_of, corr[torch.arange(len(channel_of)), channel_of]


def permute_channels(x: torch.Tensor, form: HeadForm, channel_of: torch.Tensor) -> torch.Tensor:
    """Heads (B, P) with channel c taken from channel channel_of[c]."""
    return permute_heads(x, form, torch.arange(form.classes), channel_of)


def matched_average(pool: torch.Tensor, donors: list[tuple[torch.Tensor, torch.Tensor]], form: HeadForm) -> torch.Tensor:
    """(P,): the average of the donors' heads (each (P,)), each with its channels matched to this trunk's on the
    same pool images (donors: (donor's pool features, donor's head)). A head in this trunk's own channel order."""
    return matched_prior(pool, donors, form)[0]


def matched_prior(pool: torch.Tensor, donors: list[tuple[torch.Tensor, torch.Tensor]],
                  form: HeadForm) -> tuple[torch.Tensor, torch.Tensor]:
    """The matched average (P,) and each channel's mean correlation with the donor channels matched to it (C,)."""
    heads, quality = [], []
    for donor_pool, head in donors:
        channel_of, corr = _match(pool, donor_pool)
        heads.append(permute_channels(head[None].float(), form, channel_of)[0])
        quality.append(corr)
    return torch.stack(heads).mean(0), torch.stack(quality).mean(0).float()


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
        over_k = n.mean(1, keepdim=True)                                           # (B, 1, C, d)
        small = (self.over_k(over_k) + self.over_all(over_k.mean(2, keepdim=True))
                 + self.time(temb)[:, None, None])                                 # (B, 1, C, d): one broadcast
        # the class's row mixed over channels: mix (mix' n), with the linear map applied on the RANK side
        mixed = torch.einsum("bcr,bkrd->bkcd", mix, torch.einsum("bcr,bkcd->bkrd", mix, self.mixed(n)))
        a = self.own(n).add_(mixed).add_(small).add_(self.over_c(n.mean(2, keepdim=True)))
        return h + self.out(F.gelu(a))


class EquivariantDenoiser(nn.Module):
    """(B, P) noisy normalised heads, (B,) timesteps, (B, D) conditions, (B,) keep flags -> (B, P) noise."""

    def __init__(self, form: HeadForm, cfg: HeadGenConfig):
        super().__init__()
        self.form, self.shape, d = form, CondShape.of(form, cfg), cfg.width
        self.inp_entry = nn.Linear(1 + self.shape.entry, d)                  # W[k, c] and the entry's condition
        self.inp_channel = nn.Linear(2 + self.shape.channel, d, bias=False)  # gamma[c], beta[c], the channel's
        self.inp_class = nn.Linear(1 + self.shape.klass, d, bias=False)      # b[k] and the class's condition
        self.inp_global = nn.Linear(GLOBAL + 1, d, bias=False)    # the shots' noise level and the condition flag
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
            cond = x.new_zeros(b, self.shape.dim)
            keep = torch.zeros(b, dtype=torch.bool, device=x.device)
        elif keep is None:
            keep = torch.ones(b, dtype=torch.bool, device=x.device)
        flag = keep.to(x.dtype)
        cond = cond * flag[:, None]  # the null condition: every feature zero, the flag off
        entry, channel, klass, mix, glob = self.shape.unpack(cond)
        # one linear map of every entry's inputs, in parts: each part on the axis it lives on, then broadcast
        h = self.inp_entry(torch.cat([w[..., None], entry], -1))
        h = h + (self.inp_channel(torch.cat([g[..., None], beta[..., None], channel], -1))[:, None]
                 + self.inp_class(torch.cat([bias[..., None], klass], -1))[:, :, None]
                 + self.inp_global(torch.cat([glob, flag[:, None]], -1))[:, None, None])
        temb = self.temb(timestep_embedding(t, self.width))
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
    pool candidates, the same images for every trunk), its head checkpoints (n, P) in the layout's order and the
    head it lends to other trunks' priors (P,) (its own; by default the mean of its checkpoints)."""
    shots: torch.Tensor
    labels: torch.Tensor
    pool: torch.Tensor
    heads: torch.Tensor
    name: str = ""
    own: torch.Tensor | None = None

    @property
    def lent(self) -> torch.Tensor:
        return self.heads.float().mean(0) if self.own is None else self.own.float()


@dataclass(frozen=True)
class Asked:
    """What a head generator is asked with: the condition (D,) and, for a prior generator, the prior head (P,) in
    the trunk's units (the sets are prior + the generated residual)."""
    cond: torch.Tensor
    prior: torch.Tensor | None = None


@dataclass
class HeadGenerator:
    """A trained head generator: the EMA denoiser, its config, the head scaling, and what it was trained on."""
    form: HeadForm
    cfg: HeadGenConfig
    scale: HeadScale                 # of what the diffusion generates: heads, or residuals from the prior
    denoiser: EquivariantDenoiser
    meta: dict = field(default_factory=dict)
    inputs: HeadScale | None = None  # of the heads a prior generator reads as its prior

    @property
    def shape(self) -> CondShape:
        return CondShape.of(self.form, self.cfg)

    def ask(self, shots: torch.Tensor, labels: torch.Tensor, pool: torch.Tensor | PoolStats,
            donors: list[tuple[torch.Tensor, torch.Tensor]] | None = None) -> Asked:
        """The condition of a trunk from its standardised features of the shots (with labels) and of the pool; a
        prior generator also needs the donors (each training trunk's features of the same pool images, its head)."""
        if not self.shape.prior:
            return Asked(condition(shots, labels, pool, self.shape))
        if not donors:
            raise ValueError("this head generator starts from the training trunks' matched heads: give donors")
        prior, quality = matched_prior(pool.pool if isinstance(pool, PoolStats) else pool.float(), donors, self.form)
        return Asked(condition(shots, labels, pool, self.shape, self._read(prior, quality)), prior)

    def _read(self, prior: torch.Tensor, quality: torch.Tensor) -> torch.Tensor:
        """The prior as the condition reads it: normalised like the heads, with its match quality if read."""
        read = self.inputs.normalise(prior[None], self.form)[0]
        return torch.cat([read, quality]) if self.shape.quality else read

    @torch.no_grad()
    def sample(self, asked: Asked | None, n: int, generator: torch.Generator, guidance: float = 1.0,
               sampler: str = "ddim", steps: int | None = 50) -> dict[str, torch.Tensor]:
        """n heads {name: (n, *shape)} for one trunk (None: unconditional, for a generator without a prior; guidance
        0 is the unconditional model too, and a prior generator keeps its prior), DDIM-`steps` or DDPM."""
        if asked is None and self.shape.prior:
            raise ValueError("a prior head generator has no unconditional sets without a prior; ask it for a trunk")
        diffusion = Diffusion(self.cfg.timesteps)
        guide = None if asked is None else Guide(asked.cond.float()[None].expand(n, -1), guidance)
        x = self.scale.restore(diffusion.sample(self.denoiser.eval(), (n, numel(self.form)), sampler, steps,
                                                generator, guide=guide), self.form)
        return unpack_heads(x if asked is None or asked.prior is None else x + asked.prior[None], self.form)

    def save(self, folder: str | Path) -> None:
        """heads.json (format, form, config, scaling, meta) and the EMA denoiser's weights."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_safetensors(folder / WEIGHTS_FILE, self.denoiser.state_dict(), {"format": FORMAT})
        write_json(folder / CONFIG_FILE, {"format": FORMAT, "format_version": FORMAT_VERSION,
                                          "form": asdict(self.form), "config": self.cfg.to_dict(),
                                          "scale": asdict(self.scale), "meta": self.meta,
                                          "inputs": None if self.inputs is None else asdict(self.inputs)})

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
        inputs = d.get("inputs") and HeadScale(tuple(d["inputs"]["mean"]), tuple(d["inputs"]["std"]))
        return cls(form, cfg, scale, net.eval().requires_grad_(False), d.get("meta", {}), inputs or None)


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
    """Fit the equivariant denoiser on every head of `trunks`, the shots redrawn at every step. A prior generator
    (cfg.prior 'matched') learns each trunk's heads as residuals from the average of the other trunks' heads matched
    to it on the same pool: what it will be given for a trunk it never saw."""
    shape = CondShape.of(form, cfg)
    if shape.prior and len(trunks) < 2:
        raise ValueError("a prior head generator needs at least two training trunks (each one's prior is the others')")
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
        net = EquivariantDenoiser(form, cfg)
    ema = copy.deepcopy(net).requires_grad_(False)
    # the pools: the same images for every trunk, so that each trunk's channels can be matched to the others'
    n_pool = min(len(t.pool) for t in trunks)
    picks = [torch.randperm(n_pool, generator=generator)[:cfg.pool] for _ in range(cfg.pools_per_trunk)]
    stats = [[PoolStats.of(t.pool[i]) for i in picks] for t in trunks]
    inputs = HeadScale.fit(torch.cat([t.heads.float() for t in trunks]), form)
    if shape.prior:
        priors = [[matched_prior(stats[ti][p].pool, [(stats[d][p].pool, trunks[d].lent)
                                                      for d in range(len(trunks)) if d != ti], form)
                   for p in range(len(picks))] for ti in range(len(trunks))]
        targets = [[t.heads.float() - priors[ti][p][0] for p in range(len(picks))] for ti, t in enumerate(trunks)]
    else:
        priors = [[None] * len(picks) for _ in trunks]
        targets = [[t.heads.float()] * len(picks) for t in trunks]
    scale = HeadScale.fit(torch.cat([x for per in targets for x in per]), form)
    targets = [[scale.normalise(x, form) for x in per] for per in targets]
    model = HeadGenerator(form, cfg, scale, net, {}, inputs)
    read = [[None if q is None else model._read(*q) for q in per] for per in priors]
    diffusion = Diffusion(cfg.timesteps)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.lr * 0.1)
    losses = []
    for step in range(cfg.steps):
        x0, conds = [], []
        for _ in range(cfg.batch_size):
            ti = int(torch.randint(len(trunks), (1,), generator=generator))
            hi = int(torch.randint(len(trunks[ti].heads), (1,), generator=generator))
            k = cfg.shots[int(torch.randint(len(cfg.shots), (1,), generator=generator))]
            p = int(torch.randint(len(picks), (1,), generator=generator))
            shots, labels = _draw_shots(trunks[ti], k, form.classes, generator)
            x0.append(targets[ti][p][hi])
            conds.append(condition(shots, labels, stats[ti][p], shape, read[ti][p]))
        loss = diffusion.loss(net, torch.stack(x0), generator, guide=Guide(torch.stack(conds), drop=cfg.drop))
        optimizer_step(loss, opt, sched)
        with torch.no_grad():
            decay = ema_decay(step, cfg.ema_decay)
            for e, q in zip(ema.parameters(), net.parameters()):
                e.lerp_(q, 1 - decay)
        losses.append(loss.item())
        if log is not None and (step % 100 == 0 or step == cfg.steps - 1):
            log(step, sum(losses[-100:]) / len(losses[-100:]))
    meta = {"trunks": [t.name for t in trunks], "heads": sum(len(t.heads) for t in trunks),
            "loss_last_100": sum(losses[-100:]) / len(losses[-100:])}
    return HeadGenerator(form, cfg, scale, ema.eval(), meta, inputs)
