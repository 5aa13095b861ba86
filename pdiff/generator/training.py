"""Fit the parameter autoencoder, then the latent DDPM with an EMA; returns a Bundle."""
from __future__ import annotations

import copy
import time

import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap
from tqdm.auto import tqdm

from pdiff.generator.bundle import Bundle, BundleInfo, Normaliser
from pdiff.collection.folder import Collection
from pdiff.core import dist
from pdiff.core.config import AEConfig, DDPMConfig, auto_fold
from pdiff.data.datasets import Split
from pdiff.generator.conditions import Conditions
from pdiff.generator.diffusion import Diffusion, Guide
from pdiff.models.staged import BatchedEvaluator, accuracies, first_stage, tail_input, tail_kwargs
from pdiff.generator.nets import Denoiser, ParamAutoencoder
from pdiff.core.params import BN_STATISTICS, denormalize, norm_stats, normalize, unflatten
from pdiff.core.runtime import optimizer_step, seeded_from
from pdiff.core.splice import stacked_params
from pdiff.models.loading import check_architecture


def _batches(k: int, batch_size: int, generator: torch.Generator):
    """Endless random minibatch indices over k items (each epoch a new permutation)."""
    while True:
        order = torch.randperm(k, generator=generator)
        for i in range(0, k, batch_size):
            yield order[i:i + batch_size]


def _noise(shape, scale: float, generator: torch.Generator, device) -> torch.Tensor:
    return scale * torch.randn(shape, generator=generator).to(device)


class BehaviourLoss:
    """How far reconstructed vectors are from their originals in function, not in parameters: the logits
    of each original's own trunk with a reconstruction spliced in, against the original's, on the first `n_images`
    training images (each trunk computed once, the generated tail under vmap). Measured in units of the
    originals' own logit spread over the K, so weight 1 puts it on the scale of the normalised MSE.

    Why: the K checkpoints' deviations from their mean are 91% one direction (the collection run's drift);
    what tells one checkpoint's predictions from another's lives in the remaining few per cent, which an
    MSE-trained autoencoder drops first. A multi-trunk collection's checkpoints are scored on their own trunks
    (`collection.trunk_of`): on another trunk's features a head's logits say nothing about the head.
    """

    def __init__(self, collection: Collection, mean: torch.Tensor, std: torch.Tensor, n_images: int, device="cpu",
                 train: Split | None = None):
        task, layout = collection.task, collection.layout
        images = (train if train is not None else Split.load(task.dataset, "train")).subset(n_images)
        self.trunk_of = torch.tensor(collection.trunk_of, device=device)
        self._tails = {t: _tail(task, layout, state, images, device)
                       for t, state in _trunk_states(collection).items()}
        self.layout, self.mean, self.std = layout, mean.to(device), std.to(device)
        with torch.no_grad():
            originals = collection.vectors().to(device)
            idx = torch.arange(len(originals), device=device)
            self.targets = self.logits(normalize(originals, self.mean, self.std, layout), idx)  # (K, n_images, classes)
        self.scale = self.targets.var(0).mean()

    def logits(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """(B, P) normalised vectors, (B,) the checkpoints they stand for -> (B, n_images, classes), each row on
        its checkpoint's trunk."""
        params = unflatten(denormalize(x, self.mean, self.std, self.layout), self.layout)
        # BatchNorm statistics are inputs batch_norm cannot differentiate: their reconstruction is the MSE's job
        params = {n: v.detach() if n.rsplit(".", 1)[-1] in BN_STATISTICS else v for n, v in params.items()}
        trunks = self.trunk_of[idx]
        if len(self._tails) == 1:  # one trunk: the whole batch in one call
            return next(iter(self._tails.values()))(params)
        out = None
        for t in trunks.unique().tolist():
            rows = (trunks == t).nonzero().squeeze(1)
            part = self._tails[t]({n: v[rows] for n, v in params.items()})
            out = part.new_empty(len(idx), *part.shape[1:]) if out is None else out
            out = out.index_copy(0, rows, part)  # out of place: gradients flow to every trunk's rows
        return out

    def __call__(self, recon: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(self.logits(recon, idx), self.targets[idx]) / self.scale


def _trunk_states(collection: Collection) -> dict[int, dict[str, torch.Tensor]]:
    """{trunk id: its state} for every trunk the collection's checkpoints come from; fails if one was not loaded."""
    used = sorted(set(collection.trunk_of))
    missing = [t for t in used if t >= len(collection.trunks)]
    if missing:
        raise ValueError(f"the collection's checkpoints come from trunks {used}, but trunks {missing} are not loaded "
                         "(Collection.load(..., trunks=True))")
    return {t: collection.trunks[t] for t in used}


def _tail(task, layout, state: dict[str, torch.Tensor], images: Split, device):
    """{name: (B, *shape)} generated layers -> (B, n_images, classes): the model `state` with each set spliced into
    its tail, the trunk's features on `images` computed once."""
    model = check_architecture(task, state).to(device).eval()
    start = first_stage(model, [n for n, _ in layout])
    features = tail_input(model, images.normalized(device), start)
    kwargs = tail_kwargs(start)
    tail = vmap(lambda params, f: functional_call(model, params, (f,), kwargs), in_dims=(0, None))
    return lambda params: tail(params, features)


def train_autoencoder(x: torch.Tensor, cfg: AEConfig, generator: torch.Generator, device="cpu",
                      behaviour: BehaviourLoss | None = None) -> tuple[ParamAutoencoder, list[float]]:
    """x: (K, P) normalised vectors. MSE with noise on the input and on the latent (p-diff), plus
    cfg.behaviour_weight times `behaviour` (reconstructions' logits against the originals') when given."""
    with seeded_from(generator):
        ae = ParamAutoencoder(x.shape[1], cfg).to(device)
    model = _parallel(ae)
    x = x.to(device)
    opt = torch.optim.AdamW(ae.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps)
    batches = _batches(len(x), min(cfg.batch_size, len(x)), generator)
    losses = []
    bar = tqdm(range(cfg.steps), desc="autoencoder", unit="step", leave=False, **_quiet_ranks())
    for step in bar:
        idx = next(batches).to(device)
        # the whole batch's noise drawn on every rank, each rank training on its share of the rows
        noise = _noise((len(idx), x.shape[1]), cfg.input_noise, generator, device)
        latent = _noise((len(idx), *ae.latent_shape), cfg.latent_noise, generator, device)
        rows = _rows(len(idx), device)
        idx, noise, latent = idx[rows], noise[rows], latent[rows]
        xb = x[idx]
        recon = model(xb + noise, latent)
        loss = F.mse_loss(recon, xb)
        if behaviour is not None and cfg.behaviour_weight > 0:
            loss = loss + cfg.behaviour_weight * behaviour(recon, idx)
        optimizer_step(loss, opt, sched)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(mse=f"{loss.item():.2e}", refresh=False)
    return ae.eval(), losses


def _parallel(module: torch.nn.Module) -> torch.nn.Module:
    """Under torchrun: the module in DistributedDataParallel, which averages the ranks' gradients; else itself."""
    return torch.nn.parallel.DistributedDataParallel(module) if dist.world() > 1 else module


def _quiet_ranks() -> dict:
    """tqdm's arguments: no bar on ranks other than 0 (rank 0 keeps the default, which TQDM_DISABLE can turn off)."""
    return {} if dist.is_main() else {"disable": True}


def _rows(batch: int, device) -> torch.Tensor:
    """The rows of a batch this rank trains on: every world-th, from its rank (all of them in one process). The
    ranks' gradients, averaged, are the whole batch's mean gradient when the shares are equal."""
    return torch.arange(dist.rank(), batch, dist.world(), device=device)


def ema_decay(step: int, decay: float) -> float:
    """The EMA's decay at `step` (from 0), warmed up as (1 + step) / (10 + step) until it reaches `decay`.

    Why: the EMA starts as a copy of the initial denoiser, whose output layer is zero. At a fixed 0.999, 600 steps
    (the API example) leave 0.999^600 = 55 % of that zero-output start in the weights sampling uses, which pulls
    every sample towards the mean. With the warm-up the EMA follows the model early on and averages over about
    the last tenth of training; from step 8,990 on it is the fixed decay (the default 12,000-step run
    ends on 3,000 steps of it)."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def train_denoiser(z: torch.Tensor, cfg: DDPMConfig, generator: torch.Generator, device="cpu",
                   cond: torch.Tensor | None = None) -> tuple[Denoiser, list[float]]:
    """z: (K, C, L) standardised latents. Epsilon-MSE, a timestep per sample, EMA kept from step 0 (warmed up:
    `ema_decay`). With `cond` (K, cfg.condition_dim), each latent's standardised condition, a conditional denoiser
    for classifier-free guidance (a cfg.condition_drop share of each batch sees the null condition)."""
    with seeded_from(generator):
        net = Denoiser(tuple(z.shape[1:]), cfg).to(device)
    ema = copy.deepcopy(net).requires_grad_(False)
    model = _parallel(net)
    diffusion = Diffusion(cfg.timesteps, cfg.beta_start, cfg.beta_end)
    z = z.to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=cfg.lr * 0.1)
    batches = _batches(len(z), min(cfg.batch_size, len(z)), generator)
    losses = []
    bar = tqdm(range(cfg.steps), desc="ddpm", unit="step", leave=False, **_quiet_ranks())
    for step in bar:
        idx = next(batches).to(device)
        guide = Guide(cond[idx], drop=cfg.condition_drop) if cond is not None else None
        loss = diffusion.loss(model, z[idx], generator, _rows(len(idx), device), guide)
        optimizer_step(loss, opt, sched)
        _ema_update(ema, net, ema_decay(step, cfg.ema_decay))
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return ema.eval(), losses


def latent_stats(z: torch.Tensor, mode: str = "per_dim") -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std the DDPM's latents are standardised with (stored in the bundle, undone after sampling).

    "per_dim": one pair per latent number (shape (C, L)), as latent diffusion models do. On the first
    default bundle the encoded originals' spread differed 50-fold between latent numbers, and after one
    scalar pair their std was 0.25 (median) of the unit scale the DDPM's noise schedule assumes, the rest
    of the latent being per-number offsets.
    "scalar": one pair for the whole latent (the first bundles). A number with no spread keeps std 1.
    """
    if mode == "scalar":
        return z.mean(), z.std()
    if mode != "per_dim":
        raise ValueError(f"unknown latent_scale {mode!r}; use 'per_dim' or 'scalar'")
    std = z.std(0)
    return z.mean(0), torch.where(std > 1e-6 * std.max(), std, torch.ones_like(std))


def train_bundle(collection: Collection, ae_cfg: AEConfig, ddpm_cfg: DDPMConfig, seed: int = 0,
                 device="cpu", train: Split | None = None, conditions: Conditions | None = None) -> Bundle:
    """Normalise, fit the autoencoder, encode, fit the DDPM; a Bundle ready to save. `train`: the training
    images the behaviour term is measured on (default: the task's named dataset). `conditions`: every original's
    condition (generator.conditions): the DDPM is then conditional, for classifier-free guidance."""
    if conditions is not None:
        ddpm_cfg = DDPMConfig.from_dict({**ddpm_cfg.to_dict(), "condition_dim": conditions.dim})
    g = torch.Generator().manual_seed(seed)
    layout = collection.layout
    originals = collection.vectors()
    mean, std = norm_stats(collection.params, layout)
    if not ae_cfg.fold:
        ae_cfg = AEConfig.from_dict({**ae_cfg.to_dict(), "fold": auto_fold(originals.shape[1])})
    x = normalize(originals, mean, std, layout)

    t0 = time.perf_counter()
    behaviour = (BehaviourLoss(collection, mean, std, ae_cfg.behaviour_images, device, train)
                 if ae_cfg.behaviour_weight > 0 else None)
    ae, ae_losses = train_autoencoder(x, ae_cfg, g, device, behaviour)
    ae_s = time.perf_counter() - t0
    with torch.no_grad():
        z = ae.encode(x.to(device)).cpu()
    z_mean, z_std = latent_stats(z, ddpm_cfg.latent_scale)

    t0 = time.perf_counter()
    cond = conditions.standardised(conditions.values) if conditions is not None else None
    denoiser, ddpm_losses = train_denoiser((z - z_mean) / z_std, ddpm_cfg, g, device, cond)
    ddpm_s = time.perf_counter() - t0

    # what the clean model behind the checkpoints was trained on: the ledger of every method that uses it
    info = BundleInfo(originals_acc=collection.accs, base_acc=collection.trunk_accs[0],
                      collection_seed=collection.seed, train_size=collection.info.get("train_size"),
                      trained_on=collection.info.get("trained_on"), trunk_of=collection.trunk_of,
                      held_out_trunk=collection.held_out_trunk, held_out_trunks=list(collection.held_out_trunks),
                      training={"seed": seed, "device": str(device), "ranks": dist.world(),
                                "timings_s": {"autoencoder": ae_s, "ddpm": ddpm_s},
                                "autoencoder_final_mse": sum(ae_losses[-100:]) / len(ae_losses[-100:]),
                                "ddpm_final_loss": sum(ddpm_losses[-100:]) / len(ddpm_losses[-100:])})
    bundle = Bundle(task=collection.task, layout=layout, ae_cfg=ae_cfg, ddpm_cfg=ddpm_cfg, autoencoder=ae.cpu(),
                    denoiser=denoiser.cpu(), normaliser=Normaliser(mean, std, z_mean, z_std), originals=originals,
                    base_state=collection.base, info=info)
    bundle.set_victims(collection.victims)
    bundle.conditions = conditions
    return bundle


@torch.no_grad()
def reconstruction_report(bundle: Bundle, test: Split, device="cpu",
                          trunks: list[dict[str, torch.Tensor]] | None = None) -> dict:
    """Decode the K originals, splice each into its own trunk, compare test accuracies (percent). `trunks`: the
    collection's trunk states by id, needed when the bundle's originals come from trunks other than the base."""
    ae = bundle.autoencoder.to(device).eval()
    x = bundle.normaliser.normalise(bundle.originals, bundle.layout)
    recon = bundle.normaliser.denormalise(ae.decode(ae.encode(x.to(device))).cpu(), bundle.layout)
    trunk_of = torch.tensor(bundle.info.trunk_of or [0] * len(recon))
    states = trunks or [bundle.base_state]
    used = trunk_of.unique().tolist()
    if max(used) >= len(states):
        raise ValueError(f"the bundle's originals come from trunks {used}; give every trunk's state (trunks=), got "
                         f"{len(states)}")
    acc, orig = torch.empty(len(recon), dtype=torch.float64), torch.empty(len(recon), dtype=torch.float64)
    for t in used:
        rows = (trunk_of == t).nonzero().squeeze(1)
        state = states[t]
        evaluator = BatchedEvaluator(check_architecture(bundle.task, state), test.normalized(device), bundle.names,
                                     device)
        for out, vectors in ((acc, recon), (orig, bundle.originals)):
            pred = evaluator.predict_many(stacked_params(vectors[rows], bundle.layout, state))
            out[rows] = torch.tensor(accuracies(pred, test.labels), dtype=torch.float64)
    acc, orig = acc.tolist(), orig.tolist()
    diffs = [abs(a - b) for a, b in zip(acc, orig)]
    return {"acc": acc, "originals_acc": orig, "mean_abs_diff": sum(diffs) / len(diffs), "max_abs_diff": max(diffs)}
