"""The data-fit controls of a few-shot head: what K labelled shots per class and an unlabelled pool give on a trunk's
own features with no generator. A head generated for that trunk from the same images must beat them to mean anything.

Every control reads the trunk's features in its own units (models.heads.standardise) and returns its test logits,
its test accuracy and its clean-image ledger (labelled shots, unlabelled images):
- `nearest_mean`: each class's mean of the shots; the nearest one (squared Euclidean) wins; `nearest_mean_pool`:
  the same with the means refined on the unlabelled pool (k-means from the shots' means: what a head generator with
  `refine` reads);
- `probe`: multinomial logistic regression on the shots, its inverse regularisation C chosen by stratified k-fold
  cross-validation on the shots alone (k = min(K, 5); K = 1 leaves nothing to validate on: C = 1);
- `lda`: shrinkage LDA on the shots (Ledoit-Wolf within-class covariance; sklearn's lsqr solver);
  `lda_pool`: the class means of the shots, and a within-class covariance from the unlabelled pool: the pool's
  (Ledoit-Wolf) less the shots' between-class scatter, its eigenvalues kept above 1e-3 of the largest (the pool's
  own covariance holds the between-class directions and ruins LDA: 25 % at K = 1);
- `self_trained`: the probe, then rounds of refitting on the shots and the pool's most confident pseudo-labels,
  class-balanced, a growing share each round;
- `stitch`: for each donor trunk (a training trunk), a stitch from this trunk's features to the donor's fitted on
  the unlabelled pool (no labels; measure.stitch.fit_stitch), then the donor's own head; the mean accuracy over the
  donors, each one's in `info`; `stitch_ensemble`: the mean of the donors' logits;
- `matched_average`: the donors' own heads with their channels matched to this trunk's on the pool (a permutation
  each, no labels), averaged: a head in this trunk's own form (what a head generator with prior 'matched' starts
  from).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pdiff.generator.equivariant import matched_average, pack_heads, refined_means, unpack_heads
from pdiff.measure.stitch import fit_stitch
from pdiff.models.heads import HeadForm, head_logits

PROBE_CS = tuple(float(c) for c in np.logspace(-3, 2, 11))  # the probe's C grid (sklearn's inverse ridge)
PROBE_FOLDS = 5
SELF_TRAIN_SHARES = (0.25, 0.5, 1.0)  # each round's share of the pool taken as pseudo-labelled, most confident first


@dataclass(frozen=True)
class FewShotData:
    """One trunk's standardised features (in its own units) of one draw: shots (10K, C) with labels, pool (M, C)."""
    shots: torch.Tensor
    labels: torch.Tensor
    pool: torch.Tensor
    classes: int

    def ledger(self, labelled: bool = True, unlabelled: bool = False) -> dict[str, int]:
        return {"labelled": len(self.labels) if labelled else 0, "unlabelled": len(self.pool) if unlabelled else 0}


@dataclass(frozen=True)
class Donor:
    """A training trunk for the stitch: its standardised features of the same pool images and its own head."""
    name: str
    pool: torch.Tensor
    head: dict[str, torch.Tensor]


def accuracy_of(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * (logits.argmax(-1) == labels).double().mean().item()


def class_means(data: FewShotData) -> torch.Tensor:
    """(classes, C): each class's mean of the shots."""
    return torch.stack([data.shots[data.labels == c].mean(0) for c in range(data.classes)])


def nearest_mean_logits(data: FewShotData, test: torch.Tensor) -> torch.Tensor:
    return -torch.cdist(test, class_means(data)).square()


def _probe(x: np.ndarray, y: np.ndarray, k: int, seed: int, sample_weight=None, c: float | None = None):
    """A multinomial logistic regression; C cross-validated on (x, y) when not given. Returns (model, C)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    if c is None:
        if k < 2:
            c = 1.0
        else:
            folds = StratifiedKFold(n_splits=min(k, PROBE_FOLDS), shuffle=True, random_state=seed)
            scores = [cross_val_score(LogisticRegression(C=ci, max_iter=2000), x, y, cv=folds).mean()
                      for ci in PROBE_CS]
            c = PROBE_CS[int(np.argmax(scores))]  # the smallest C among equals: the most regularised
    model = LogisticRegression(C=c, max_iter=2000).fit(x, y, sample_weight=sample_weight)
    return model, c


def _lda_logits(means: torch.Tensor, cov: torch.Tensor, test: torch.Tensor) -> torch.Tensor:
    """Linear discriminant scores with equal priors: x' S^-1 mu_k - mu_k' S^-1 mu_k / 2."""
    a = torch.linalg.solve(cov.double(), means.double().T).T  # (classes, C)
    return (test.double() @ a.T - 0.5 * (a * means.double()).sum(1)).float()


def ledoit_wolf(x: torch.Tensor) -> torch.Tensor:
    from sklearn.covariance import LedoitWolf
    return torch.as_tensor(LedoitWolf().fit(x.double().numpy()).covariance_)


def within_from_pool(data: FewShotData) -> torch.Tensor:
    """A within-class covariance with no labelled pool: the pool's covariance less the between-class scatter of the
    shots' class means (about the pool's mean), made positive definite."""
    centred = class_means(data).double() - data.pool.double().mean(0)
    within = ledoit_wolf(data.pool) - centred.T @ centred / data.classes
    values, vectors = torch.linalg.eigh(within)
    return vectors @ torch.diag(values.clamp(min=1e-3 * values.max())) @ vectors.T


def controls(data: FewShotData, test: torch.Tensor, labels: torch.Tensor, donors: list[Donor], form: HeadForm,
             seed: int = 0) -> dict[str, dict]:
    """Every control's test accuracy, ledger and info, and its test logits (`logits`, dropped by `public`)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    k = len(data.labels) // data.classes
    x, y = data.shots.double().numpy(), data.labels.numpy()
    out = {}

    def put(name, logits, ledger, **info):
        out[name] = {"acc": accuracy_of(logits, labels), "ledger": ledger, "info": info, "logits": logits}

    put("nearest_mean", nearest_mean_logits(data, test), data.ledger())
    means, _ = refined_means(data.shots.float(), data.labels, data.pool.float(), data.classes)
    put("nearest_mean_pool", -torch.cdist(test, means).square(), data.ledger(unlabelled=True))
    probe, c = _probe(x, y, k, seed)
    put("probe", torch.as_tensor(probe.decision_function(test.double().numpy())).float(), data.ledger(),
        C=c, cv_folds=min(k, PROBE_FOLDS) if k >= 2 else 0)
    if k >= 2:
        lda = LinearDiscriminantAnalysis(solver="lsqr", shrinkage="auto").fit(x, y)
        put("lda", torch.as_tensor(lda.decision_function(test.double().numpy())).float(), data.ledger())
    else:  # one shot per class: no within-class scatter to shrink; LDA is the nearest mean
        put("lda", nearest_mean_logits(data, test), data.ledger(), note="K = 1: no within-class covariance")
    put("lda_pool", _lda_logits(class_means(data), within_from_pool(data), test), data.ledger(unlabelled=True))
    put("self_trained", _self_trained(data, test, probe, c), data.ledger(unlabelled=True), C=c,
        shares=list(SELF_TRAIN_SHARES))
    if donors:
        each = [head_logits(fit_stitch(data.pool, d.pool)(test), d.head, form)[0] for d in donors]
        accs = [accuracy_of(lg, labels) for lg in each]
        put("stitch", torch.stack(each).mean(0), data.ledger(labelled=False, unlabelled=True),
            donors=[d.name for d in donors], accs=accs)
        out["stitch"]["acc"] = float(np.mean(accs))  # the mean donor; the ensemble is the next entry
        put("stitch_ensemble", torch.stack(each).mean(0), data.ledger(labelled=False, unlabelled=True),
            donors=[d.name for d in donors])
        pulled = matched_average(data.pool.float(), [(d.pool.float(), pack_heads(d.head, form)[0]) for d in donors],
                                 form)
        put("matched_average", head_logits(test, unpack_heads(pulled[None], form), form)[0],
            data.ledger(labelled=False, unlabelled=True), donors=[d.name for d in donors])
    return out


def _self_trained(data: FewShotData, test: torch.Tensor, probe, c: float) -> torch.Tensor:
    """Self-training from the probe: each round refits on the shots and the pool's most confident pseudo-labels
    (per predicted class, the same share of that class's pool images), then predicts the pool again."""
    x, y = data.shots.double().numpy(), data.labels.numpy()
    pool = data.pool.double().numpy()
    model = probe
    for share in SELF_TRAIN_SHARES:
        prob = model.predict_proba(pool)
        pred, conf = prob.argmax(1), prob.max(1)
        keep = np.zeros(len(pool), dtype=bool)
        for cls in range(data.classes):
            idx = np.flatnonzero(pred == cls)
            keep[idx[np.argsort(-conf[idx])[:int(np.ceil(share * len(idx)))]]] = True
        xs, ys = np.concatenate([x, pool[keep]]), np.concatenate([y, pred[keep]])
        model, _ = _probe(xs, ys, 0, 0, c=c)
    return torch.as_tensor(model.decision_function(test.double().numpy())).float()


def public(results: dict[str, dict]) -> dict[str, dict]:
    """The results without their logits (what a report keeps)."""
    return {name: {k: v for k, v in r.items() if k != "logits"} for name, r in results.items()}
