"""Conditions as data: what a conditional bundle is asked for, computed the same way for what it was trained on and
for what it is asked to make.

- `acc`: a checkpoint's accuracy on the validation split (the last training images, which no model saw; never the
  test split). Asked as `acc=VALUE` (percent, within the range the bundle saw) or `acc=best`.
- `trunk`: a trunk's signature, from the model itself: its features at the splice point on a fixed probe set of
  clean training images (PROBE_PER_CLASS per class, kept in the bundle), standardised per feature, averaged per
  class, flattened and projected by a fixed random matrix to SIGNATURE_DIM numbers. Asked as `trunk=target` (the
  model the sets go into) or `trunk=FILE` (another model file).

A bundle stores every original's raw condition and the mean and std they are standardised with; the denoiser sees
standardised conditions. `none` asks the same network for its unconditional model (the null condition).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from pdiff.collection.folder import Collection
from pdiff.data.datasets import DATASETS, Split
from pdiff.models.loading import check_architecture
from pdiff.models.staged import BatchedEvaluator, accuracies, first_stage, predict
from pdiff.core.settings import Condition, SamplingSpec
from pdiff.core.splice import stacked_params
from pdiff.generator.diffusion import Guide
from pdiff.models.loading import load_state_file

PROBE_PER_CLASS = 20     # clean training images per class a trunk's signature is computed on
SIGNATURE_DIM = 128      # numbers a signature is projected to
SIGNATURE_SEED = 0       # the fixed projection's seed


@dataclass
class Conditions:
    """Every original's raw condition (K, dim), how conditions are standardised, and what they were computed on."""
    kind: str
    values: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor
    meta: dict
    probe: Split | None = None   # trunk: the probe images every signature is computed on

    @classmethod
    def of(cls, kind: str, values: torch.Tensor, meta: dict, probe: Split | None = None) -> "Conditions":
        values = values.float().reshape(len(values), -1)
        return cls(kind, values, values.mean(0), values.std(0).clamp(min=1e-6), meta, probe)

    @property
    def dim(self) -> int:
        return self.values.shape[1]

    @property
    def acc_range(self) -> tuple[float, float]:
        """An accuracy condition's lowest and highest value over the originals (what it can be asked for)."""
        low, high = self.meta["range"]
        return low, high

    @property
    def chosen_guidance(self) -> float | None:
        """The guidance scale chosen on validation (guidance.set_guidance); None where none was chosen."""
        return self.meta.get("guidance")

    @property
    def clean_images(self) -> int:
        """The clean images asking for this condition rests on (the ledger): the validation images every original's
        accuracy was measured on, or the probe images a signature is computed from."""
        return len(self.probe.labels) if self.probe is not None else self.meta.get("validation_images", 0)

    def standardised(self, values: torch.Tensor) -> torch.Tensor:
        return (values.float().reshape(-1, self.dim) - self.mean) / self.std


def acc_conditions(collection: Collection, validation: Split, device="cpu") -> Conditions:
    """Each original's accuracy on the validation split, spliced into the base it was collected on (its trunk)."""
    values = []
    for trunk, state in enumerate(collection.trunks):
        rows = torch.tensor(collection.trunk_of) == trunk
        if not rows.any():
            continue
        model = check_architecture(collection.task, state)
        evaluator = BatchedEvaluator(model, validation.normalized(device), [n for n, _ in collection.layout], device)
        vectors = collection.vectors()[rows]
        values.append((rows.nonzero().flatten(), accuracies(evaluator.predict_many(
            stacked_params(vectors, collection.layout, state)), validation.labels)))
    acc = torch.zeros(collection.k)
    for rows, accs in values:
        acc[rows] = torch.tensor(accs, dtype=torch.float32)
    return Conditions.of("acc", acc, {"split": f"validation: the last {len(validation.labels)} training images",
                                      "validation_images": len(validation.labels),
                                      "range": [acc.min().item(), acc.max().item()]})


def probe_set(pool: Split, per_class: int = PROBE_PER_CLASS) -> Split:
    """The first `per_class` images of each class in `pool` (the training images no model held out)."""
    idx = torch.cat([(pool.labels == c).nonzero().flatten()[:per_class] for c in pool.labels.unique().sort().values])
    idx = idx.sort().values
    return Split(pool.images[idx], pool.labels[idx], pool.dataset, pool.mean, pool.std)


def _projection(features: int, classes: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(SIGNATURE_SEED)
    return torch.randn(features * classes, SIGNATURE_DIM, generator=g) / (features * classes) ** 0.5


@torch.no_grad()
def signature(task, state: dict, layers: list[str], probe: Split, device="cpu") -> torch.Tensor:
    """A model's signature (SIGNATURE_DIM,): its own features where `layers` begin, on the probe images,
    standardised per feature, averaged per class, flattened and projected."""
    model = check_architecture(task, state).to(device)
    start = first_stage(model, layers)
    if start is None:
        raise ValueError(f"a trunk signature needs a staged model; {type(model).__name__} runs whole")
    feats = predict(model, probe.normalized(device), 0, start).flatten(1).float().cpu()
    feats = (feats - feats.mean(0)) / feats.std(0).clamp(min=1e-6)
    classes = DATASETS[probe.dataset].classes if probe.dataset in DATASETS else int(probe.labels.max()) + 1
    means = torch.stack([feats[probe.labels == c].mean(0) if (probe.labels == c).any() else torch.zeros(feats.shape[1])
                         for c in range(classes)])
    return means.flatten() @ _projection(feats.shape[1], classes)


def trunk_conditions(collection: Collection, probe: Split, device="cpu") -> Conditions:
    """Each original's trunk signature (the same for every checkpoint of one trunk)."""
    layers = [n for n, _ in collection.layout]
    sigs = [signature(collection.task, state, layers, probe, device) for state in collection.trunks]
    values = torch.stack([sigs[t] for t in collection.trunk_of])
    return Conditions.of("trunk", values, {"probe": f"{len(probe.labels)} clean training images, {PROBE_PER_CLASS} "
                                                    "per class", "dim": SIGNATURE_DIM, "projection_seed": SIGNATURE_SEED,
                                           "trunks": len(sigs)}, probe)


# what "default" asks a conditional bundle for
DEFAULT_ASK = {"acc": Condition("acc", "best"), "trunk": Condition("trunk", "target")}
NO_GUIDANCE_CHOSEN = 1.0  # the scale of a conditional bundle that chose none on validation (plain conditioning)


def resolve(spec: SamplingSpec, conditions: Conditions | None) -> SamplingSpec:
    """The spec as sampling runs it, resolved once where sampling starts (and unchanged by resolving again): the
    condition with "default" replaced by what the bundle is for (acc=best, trunk=target; none for an unconditional
    bundle), and the guidance scale the sets are drawn with, which the report records: the one asked, else the one
    the bundle chose on validation, else NO_GUIDANCE_CHOSEN; None where no condition is used."""
    condition = spec.condition
    if condition.kind == "default":
        condition = Condition("none") if conditions is None else DEFAULT_ASK[conditions.kind]
    if condition.kind == "none":
        return replace(spec, condition=condition, guidance=None)
    if conditions is None:  # asked of an unconditional bundle: guide_for refuses it
        return replace(spec, condition=condition)
    chosen = conditions.chosen_guidance if conditions.chosen_guidance is not None else NO_GUIDANCE_CHOSEN
    return replace(spec, condition=condition, guidance=float(spec.guidance if spec.guidance is not None else chosen))


def guide_for(spec: SamplingSpec, conditions: Conditions | None, task, layers: list[str], target_state: dict | None = None,
              device="cpu") -> Guide | None:
    """What spec.condition asks of a bundle with these `conditions`, as the Guide sampling takes (None: "none").
    A condition the bundle was not trained on, a value outside the range it saw, or a model whose features do not fit
    the bundle's task is refused in one line."""
    spec = resolve(spec, conditions)
    asked, kind, value = spec.condition, spec.condition.kind, spec.condition.value
    if kind == "none":
        return None
    if conditions is None:
        raise ValueError(f"condition {str(asked)!r}: this bundle was trained without a condition; ask for none")
    if kind != conditions.kind:
        raise ValueError(f"condition {str(asked)!r}: this bundle was trained on the {conditions.kind} condition, "
                         f"not {kind}")
    if kind == "acc":
        low, high = conditions.acc_range
        acc = high if value == "best" else float(value)
        if not low <= acc <= high:
            raise ValueError(f"condition acc={acc:g} is outside the validation accuracies this bundle saw ({low:.2f} to "
                             f"{high:.2f}); ask within them, or acc=best")
        raw = torch.full((spec.n, 1), acc)
    else:
        if value == "target" and target_state is None:
            raise ValueError("condition trunk=target needs a target model: give one (or trunk=FILE)")
        try:
            state = target_state if value == "target" else load_state_file(value)
            raw = signature(task, state, layers, conditions.probe, device).expand(spec.n, -1)
        except (ValueError, RuntimeError) as e:  # another architecture or splice-point shape: no signature to ask
            raise ValueError(f"condition {asked}: {str(e).splitlines()[0]}") from None
    return Guide(conditions.standardised(raw), spec.guidance)
