"""Heads for trunks the generator never saw, asked for with K labelled shots per class and an unlabelled pool, beside
every data-fit control on the same images and the checks that the condition is used.

For each held-out trunk and each K, on the test split:
- `own_head` (the trunk's own head: the bar), `own_checkpoints` (its own collected heads, where there are any);
- `generated` (N heads for the trunk's own condition), `generator_mean` (their average: what a generator that
  regressed to the mean would give);
- the data-fit controls of measure.fewshot on the same shots and pool (nearest mean, probe, LDA on the shots and
  with the pool's covariance, self-training, the stitch onto each training trunk with its own head, their ensemble);
- at K = `checks_at`: `unconditional` (no condition), `swap` (the next held-out trunk's condition, same images),
  `random` (the condition of random features), `retrieval` (the heads of the training trunk whose class-mean Gram
  matrix, which no channel order changes, is nearest, as they are) and `retrieval_matched` (the same heads with
  their channels matched to the trunk's by the pool's cross-correlation: the assignment a stitch restricted to a
  permutation would find).
Every source carries its family and its clean-image ledger: labelled shots and unlabelled images of the target trunk.
The generator's own training images (shots and pools on the training trunks) are kept out of every draw here.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from pdiff.core.config import Task
from pdiff.core.settings import VALIDATION
from pdiff.data.datasets import Split
from pdiff.data.shots import draw_fewshot, usable
from pdiff.generator.equivariant import HeadGenerator, TrunkExamples, match_channels, pack_heads, unpack_heads
from pdiff.generator.headkit import HeadKit
from pdiff.measure.fewshot import Donor, FewShotData, accuracy_of, controls, public
from pdiff.measure.similarity import summary
from pdiff.models.heads import HeadForm, head_features, head_logits, own_head, standardise
from pdiff.models.loading import check_architecture

FORMAT, FORMAT_VERSION = "pdiff-heads-study", 1
FAMILIES = {"own_head": "original", "own_checkpoints": "original", "generated": "generated",
            "generator_mean": "generated", "unconditional": "check", "swap": "check", "random": "check",
            "retrieval": "check", "retrieval_matched": "check"}  # every other source: a data-fit control
TARGET = "target"  # a user's trunk, in a report


@dataclass
class Trunk:
    """A trunk (a whole model's state) and its collected head checkpoints (n, P) in the layout's order, if any."""
    name: str
    state: dict[str, torch.Tensor]
    heads: torch.Tensor | None = None


@dataclass(frozen=True)
class HeadStudySpec:
    ks: tuple[int, ...] = (1, 5, 20)
    pool: int = 1000
    seed: int = 0
    n: int = 30
    guidance: float = 1.0
    sampler: str = "ddim"
    steps: int = 50
    checks_at: int = 5
    validation: int = VALIDATION  # the last training images, never drawn


class FeatureCache:
    """Each trunk's standardised features of named image sets, computed once (and kept in `folder`, if given, under
    the trunk's name, the set's name and a digest of its images and the trunk's weights)."""

    def __init__(self, task: Task, form: HeadForm, device="cpu", folder: str | Path | None = None):
        self.task, self.form, self.device, self._cache = task, form, device, {}
        self.folder = None if folder is None else Path(folder)

    def units(self, trunk: Trunk, split: Split, key: str, idx: torch.Tensor | None = None) -> torch.Tensor:
        if (trunk.name, key) not in self._cache:
            images = split.images if idx is None else split.images[idx]
            path = None
            if self.folder is not None:
                digest = hashlib.sha256(images.numpy().tobytes())
                for name in sorted(trunk.state):
                    digest.update(trunk.state[name].float().numpy().tobytes())
                path = self.folder / f"{trunk.name}-{key}-{digest.hexdigest()[:16]}.pt"
            if path is not None and path.is_file():
                self._cache[trunk.name, key] = torch.load(path, weights_only=True)
            else:
                model = check_architecture(self.task, trunk.state).to(self.device)
                feats = head_features(model, split.prepare(images, self.device), self.form)
                self._cache[trunk.name, key] = standardise(feats, trunk.state, self.form).cpu()
                if path is not None:
                    self.folder.mkdir(parents=True, exist_ok=True)
                    torch.save(self._cache[trunk.name, key], path)
        return self._cache[trunk.name, key]


def generator_images(labels: torch.Tensor, per_class: int, classes: int, seed: int,
                     validation: int = VALIDATION) -> tuple[torch.Tensor, torch.Tensor]:
    """The images a head generator trains its conditions on, from the images every model trained on (the first
    55,000 training images): per class, `per_class` shot candidates and as many pool candidates. Returns (shot
    candidates, pool candidates)."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(usable(len(labels), validation), generator=g)
    shots, pool = [], []
    for c in range(classes):
        of_class = order[labels[order] == c]
        shots.append(of_class[:per_class])
        pool.append(of_class[per_class:2 * per_class])
    return torch.cat(shots), torch.cat(pool)


def training_examples(trunks: list[Trunk], cache: FeatureCache, train: Split,
                      images: tuple[torch.Tensor, torch.Tensor]) -> list[TrunkExamples]:
    """Each training trunk's features of the generator's images and its heads (checkpoints and its own)."""
    shots, pool = images
    out = []
    for t in trunks:
        own = pack_heads(own_head(t.state, cache.form), cache.form)
        heads = own if t.heads is None else torch.cat([t.heads.float(), own])
        out.append(TrunkExamples(cache.units(t, train, "gen-shots", shots), train.labels[shots],
                                 cache.units(t, train, "gen-pool", pool), heads, t.name, own[0]))
    return out


@dataclass
class _Context:
    model: HeadGenerator
    donors: list[Trunk]
    donor_sets: list[Donor]
    train: Split
    test: Split
    draw: object
    conds: dict  # trunk name -> K -> Asked
    spec: HeadStudySpec
    cache: FeatureCache


def head_study(model: HeadGenerator, held: list[Trunk], donors: list[Trunk], splits: tuple[Split, Split],
               spec: HeadStudySpec, cache: FeatureCache, exclude: torch.Tensor | None = None,
               pool: torch.Tensor | None = None) -> dict:
    """Every source's test accuracy on every held-out trunk at every K, and their means over the trunks.
    `splits`: (train, test); `exclude`: training images no draw may use (the generator's own); `pool`: the user's
    unlabelled pool (training-split indices) instead of spec.pool images drawn with spec.seed."""
    train, test = splits
    form = model.form
    draw = draw_fewshot(train.labels, max(spec.ks), spec.pool if pool is None else pool,
                        torch.Generator().manual_seed(spec.seed), form.classes, spec.validation, exclude)
    donor_sets = [Donor(d.name, cache.units(d, train, f"pool-{spec.seed}", draw.pool), own_head(d.state, form))
                  for d in donors]
    lent = [(d.pool, pack_heads(d.head, form)[0]) for d in donor_sets]
    asked_of = held + ([donors[0]] if len(held) == 1 else [])  # one held-out trunk: the swap asks with a donor's
    conds = {h.name: {k: _asked(model, _data(cache, h, train, draw, k), lent) for k in spec.ks} for h in asked_of}
    ctx = _Context(model, donors, donor_sets, train, test, draw, conds, spec, cache)
    per_trunk = {}
    for i, h in enumerate(held):
        t0 = time.perf_counter()
        swap = held[(i + 1) % len(held)] if len(held) > 1 else donors[0]
        per_trunk[h.name] = _one_trunk(ctx, h, swap)
        per_trunk[h.name]["seconds"] = time.perf_counter() - t0
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "spec": asdict(spec),
            "generator": {"config": model.cfg.to_dict(), **model.meta}, "held_out": [h.name for h in held],
            "donors": [d.name for d in donors],
            "draw": {"seed": spec.seed, "pool": len(draw.pool), "shots_per_class_max": draw.k,
                     "excluded_images": 0 if exclude is None else len(exclude), "pool_given": pool is not None,
                     "from": f"the first {usable(len(train.labels), spec.validation)} training images"},
            "trunks": per_trunk, "summary": _summary(per_trunk, spec.ks)}


def _shots(draw, k: int, classes: int) -> torch.Tensor:
    """The positions in draw.shots of the first k shots of each class (the draw holds draw.k per class)."""
    return (torch.arange(classes)[:, None] * draw.k + torch.arange(k)[None]).flatten()


def _data(cache: FeatureCache, trunk: Trunk, train: Split, draw, k: int) -> FewShotData:
    pick = _shots(draw, k, cache.form.classes)
    shots = cache.units(trunk, train, f"shots-{draw.seed}", draw.shots)[pick]
    pool = cache.units(trunk, train, f"pool-{draw.seed}", draw.pool)
    return FewShotData(shots, train.labels[draw.shots][pick], pool, cache.form.classes)


def _asked(model: HeadGenerator, data: FewShotData, lent: list[tuple[torch.Tensor, torch.Tensor]]):
    return model.ask(data.shots, data.labels, data.pool, lent if model.shape.prior else None)


def _one_trunk(ctx: _Context, h: Trunk, swap: Trunk) -> dict:
    model, spec, form = ctx.model, ctx.spec, ctx.model.form
    units, labels = ctx.cache.units(h, ctx.test, "test"), ctx.test.labels

    def accs(heads: dict[str, torch.Tensor]) -> list[float]:
        return [accuracy_of(lg, labels) for lg in head_logits(units, heads, form)]

    def sample(asked, guidance=spec.guidance):
        return model.sample(asked, spec.n, torch.Generator().manual_seed(spec.seed), guidance, spec.sampler,
                            spec.steps)

    own = accs(own_head(h.state, form))
    none = {"labelled": 0, "unlabelled": 0}
    by_k = {}
    for k in spec.ks:
        data = _data(ctx.cache, h, ctx.train, ctx.draw, k)
        ledger = data.ledger(unlabelled=True)
        sources = {}

        def add(name, values, used, **info):
            sources[name] = {"family": FAMILIES.get(name, "control"), "acc": values, **summary(values),
                             "ledger": used, "info": info}

        add("own_head", own, none)
        if h.heads is not None:
            add("own_checkpoints", accs(unpack_heads(h.heads.float(), form)), none)
        generated = sample(ctx.conds[h.name][k])
        add("generated", accs(generated), ledger)
        add("generator_mean", accs({n: v.mean(0, keepdim=True) for n, v in generated.items()}), ledger)
        for name, r in public(controls(data, units, labels, ctx.donor_sets, form, spec.seed)).items():
            add(name, [r["acc"]], r["ledger"], **r["info"])
        if k == spec.checks_at:
            # a prior generator keeps its prior (the trunk's own matched heads) and drops only the condition
            asked = ctx.conds[h.name][k]
            add("unconditional", accs(sample(asked if model.shape.prior else None, 0.0)),
                data.ledger(labelled=False, unlabelled=True) if model.shape.prior else none)
            add("swap", accs(sample(ctx.conds[swap.name][k])), ledger, trunk=swap.name)
            g = torch.Generator().manual_seed(spec.seed)
            fake = FewShotData(torch.randn(data.shots.shape, generator=g), data.labels,
                               torch.randn(data.pool.shape, generator=g), form.classes)
            lent = [(d.pool, pack_heads(d.head, form)[0]) for d in ctx.donor_sets]
            add("random", accs(sample(_asked(model, fake, lent))), none)
            nearest, matched = _retrieval(ctx, data, k)
            heads = nearest.heads.float() if nearest.heads is not None else pack_heads(own_head(nearest.state, form), form)
            add("retrieval", accs(unpack_heads(heads, form)), data.ledger(), trunk=nearest.name)
            add("retrieval_matched", accs(_permuted(unpack_heads(heads, form), matched, form)), ledger,
                trunk=nearest.name)
        by_k[str(k)] = sources
    return {"own_head": own[0], "k": by_k}


def _gram(data: FewShotData) -> torch.Tensor:
    """The classes' mean features' inner products over channels (K x K): the same in any channel order."""
    z = torch.stack([data.shots[data.labels == c].mean(0) for c in range(data.classes)])
    return z @ z.T / z.shape[1]


def _retrieval(ctx: _Context, data: FewShotData, k: int) -> tuple[Trunk, torch.Tensor]:
    """The donor whose class-mean Gram matrix on the same shots is nearest, and its channel for each of the
    target's channels (the assignment that maximises the pool's summed cross-correlation)."""
    gram = _gram(data)
    dist = [torch.linalg.norm(gram - _gram(_data(ctx.cache, d, ctx.train, ctx.draw, k))).item() for d in ctx.donors]
    nearest = ctx.donors[int(torch.tensor(dist).argmin())]
    return nearest, match_channels(data.pool, ctx.cache.units(nearest, ctx.train, f"pool-{ctx.draw.seed}",
                                                              ctx.draw.pool))


def _permuted(heads: dict[str, torch.Tensor], channel_of: torch.Tensor, form: HeadForm) -> dict[str, torch.Tensor]:
    """Heads with channel c taken from channel channel_of[c]."""
    g, b, w, bias = (heads[n] for n in form.names)
    return dict(zip(form.names, (g[:, channel_of], b[:, channel_of], w[:, :, channel_of], bias)))


def _summary(per_trunk: dict, ks: tuple[int, ...]) -> dict:
    """Per K and source: the mean over trunks of each trunk's mean accuracy."""
    out = {}
    for k in ks:
        names = list(next(iter(per_trunk.values()))["k"][str(k)])
        out[str(k)] = {n: summary([t["k"][str(k)][n]["mean"] for t in per_trunk.values()])["mean"] for n in names}
    return out


def head_lines(report: dict) -> str:
    """One line per K and source: its labelled / unlabelled images of the trunk, its mean accuracy on each held-out
    trunk, and over them."""
    held = report["held_out"]
    what = "target" if held == [TARGET] else f"held-out trunks {held}"
    lines = [f"{what}; pool {report['draw']['pool']} unlabelled images; N = {report['spec']['n']} "
             f"({report['spec']['sampler']}{report['spec']['steps'] or ''}), guidance {report['spec']['guidance']}"]
    for k, sources in report["summary"].items():
        lines.append(f"K = {k}: {'source':<18} {'images':>10} " + " ".join(f"{h:>9}" for h in held) + f" {'mean':>7}")
        for name, mean in sources.items():
            ledger = report["trunks"][held[0]]["k"][k][name]["ledger"]
            cells = " ".join(f"{report['trunks'][h]['k'][k][name]['mean']:>9.2f}" for h in held)
            lines.append(f"       {name:<18} {ledger['labelled']:>4} / {ledger['unlabelled']:<4} {cells} {mean:>7.2f}")
    return "\n".join(lines)


def check_target(state: dict[str, torch.Tensor], form: HeadForm) -> None:
    """Refuse, in one line, a target whose head does not have the generator's form (its feature width at the
    head's BatchNorm, its classes)."""
    for name, want, what in ((f"{form.bn}.running_mean", form.channels, "features at {bn} are {got} wide"),
                             (f"{form.linear}.bias", form.classes, "head has {got} classes")):
        if name not in state:
            raise ValueError(f"the target has no {name}: the head generator writes a {form.bn} -> ReLU -> "
                             f"{form.linear} head on {form.channels} features")
        got = state[name].shape[0]
        if got != want:
            raise ValueError(f"the target's {what.format(bn=form.bn, got=got)}; the head generator's are {want}: "
                             f"it writes heads for {form.channels} features and {form.classes} classes")


def heads_for_target(kit: HeadKit, target: dict[str, torch.Tensor], splits: tuple[Split, Split],
                     spec: HeadStudySpec, pool: torch.Tensor | None = None, device="cpu") -> dict:
    """Heads for one trunk the generator never saw (a model's state, its own head the bar), asked for with the
    trunk's own condition (trunk=target) from spec.ks shots per class and the unlabelled pool, beside every data-fit
    control on the same images with its ledger, and the checks at spec.checks_at. The draw keeps out the images the
    generator trained its conditions on. A target that is one of the generator's training trunks is said so in the
    report (`training_trunk`: the generator saw its heads) and left out of the donors."""
    model = kit.model
    check_target(target, model.form)
    train = splits[0]
    exclude = torch.cat(generator_images(train.labels, model.meta["images_per_class"], model.form.classes,
                                         model.meta["images_seed"], spec.validation))
    cache = FeatureCache(kit.task, model.form, device)
    # a training trunk asked for again lends nothing to itself (as in training, its prior is the other trunks')
    itself = [name for name, state in kit.donors if _same_model(state, target)]
    donors = [Trunk(name, state) for name, state in kit.donors if name not in itself]
    report = head_study(model, [Trunk(TARGET, target)], donors, splits, spec, cache, exclude, pool)
    return {**report, "condition": f"trunk={TARGET}", "kit": kit.label,
            "training_trunk": itself[0] if itself else None}


def _same_model(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """The same weights under the same names (a training trunk given as the target)."""
    return a.keys() == b.keys() and all(torch.equal(a[k].float(), b[k].float()) for k in a)
