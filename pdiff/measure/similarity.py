"""Similarity of parameter sets by behaviour: IoU of wrong-prediction sets, coverage, nearest distances,
a fixed t-SNE map new vectors are placed into, and the summary every report gives (best / mean / median / min / std).

Computed with matrix products on 0/1 masks, never loops over pairs (docs/method.md).
"""
from __future__ import annotations

import numpy as np
import torch


# ---- similarity ------------------------------------------------------------------------
def iou_matrix(wrong_a: torch.Tensor, wrong_b: torch.Tensor) -> torch.Tensor:
    """IoU of wrong-prediction sets for all pairs: 0/1 masks (A, n), (B, n) -> (A, B), by matrix products."""
    # counts of 0/1 products stay exact in float32 (below 2**24 images), at a fraction of a double product's time
    inter = (wrong_a.float() @ wrong_b.float().T).double()
    union = wrong_a.sum(1, keepdim=True).double() + wrong_b.sum(1).double()[None] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(inter))  # two perfect models agree


def mean_offdiag(m: torch.Tensor) -> float | None:
    """Mean of a square similarity matrix without its diagonal (self-similarity); None below 2 models."""
    n = len(m)
    return None if n < 2 else ((m.sum() - m.diagonal().sum()) / (n * (n - 1))).item()


def similarity(wrong: dict[str, torch.Tensor], reference: str = "originals") -> dict[str, dict]:
    """IoU of wrong-prediction sets, per source: each model's max IoU to the reference models, the mean IoU
    within the source, the mean IoU between the source and the reference, and coverage: the share of
    reference models that some model of the source is closer to (by IoU) than their nearest other
    reference model. A collapsed generator covers few; a copying one covers many at max IoU near 1."""
    ref = wrong[reference]
    rr = iou_matrix(ref, ref)
    nearest_other = (rr - 2 * torch.eye(len(ref), dtype=rr.dtype)).max(1).values  # each one's closest other
    out = {reference: {"self_iou": mean_offdiag(rr), "nearest_other_iou": nearest_other.tolist(),
                       "nearest_other_iou_mean": nearest_other.mean().item() if len(ref) > 1 else None}}
    for name, w in wrong.items():
        if name == reference:
            continue
        sr = iou_matrix(w, ref) if len(w) and len(ref) else None
        max_iou = sr.max(1).values.tolist() if sr is not None else []
        out[name] = {"max_iou": max_iou, "max_iou_mean": _mean(max_iou), "self_iou": mean_offdiag(iou_matrix(w, w)),
                     "cross_iou": sr.mean().item() if sr is not None else None,
                     "coverage": (sr.max(0).values > nearest_other).double().mean().item()
                     if sr is not None and len(ref) > 1 else None}
    return out


def nearest_distances(space: torch.Tensor, reference: torch.Tensor) -> list[float]:
    """Each vector's L2 distance to its nearest reference vector (both already in one comparison space)."""
    return torch.cdist(space.double(), reference.double()).min(1).values.tolist() if len(space) else []


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


# ---- t-SNE -----------------------------------------------------------------------------
TSNE_ITERATIONS = 500  # half sklearn's default: at 600 points KL 0.599 against 0.595 at 1,000, 97 % of 10-NN kept, at 40 % of the time
PLACE_NEIGHBOURS = 25  # reference points each new point is placed among (openTSNE's transform default)


class TsneMap:
    """A fixed 2-D t-SNE of reference vectors (the originals and the controls that do not depend on the generator's
    seed), into which new vectors (the generated sets, ...) are placed without moving the reference: openTSNE's
    `transform` (Policar et al.). Fitted once per reference; `coordinates` given (a stored fit) skip the
    optimisation and place new vectors exactly as the fit they came from. PCA to at most `pca_dims` first (fitted
    on the reference); perplexity clamped for small references."""

    def __init__(self, reference: torch.Tensor, seed: int = 0, pca_dims: int = 50,
                 coordinates: torch.Tensor | None = None):
        from sklearn.decomposition import PCA

        data = reference.double().numpy()
        n = len(data)
        dims = min(pca_dims, n, data.shape[1])
        self._pca = PCA(n_components=dims, svd_solver="full").fit(data) if 1 < dims < data.shape[1] else None
        self._embedding, self.coordinates = None, torch.zeros(n, 2, dtype=torch.float64)
        if n < 3:
            return
        import openTSNE

        reduced = self._reduce(data)
        affinities = openTSNE.affinity.PerplexityBasedNN(reduced, perplexity=float(min(30.0, max(1.0, (n - 1) / 3))),
                                                         method="exact", random_state=seed)
        if coordinates is None:
            start = openTSNE.initialization.pca(reduced, random_state=seed)
            fit = openTSNE.TSNEEmbedding(start, affinities, negative_gradient_method="bh", random_state=seed)
            half = TSNE_ITERATIONS // 2  # early exaggeration, then the rest (sklearn's and openTSNE's schedule)
            fit = fit.optimize(half, exaggeration=12, momentum=0.5).optimize(half, momentum=0.8)
            coordinates = torch.from_numpy(fit.view(type=np.ndarray).copy())
        self.coordinates = coordinates.double()
        # a fresh embedding of the fitted points either way: a new fit and a stored one place alike
        self._embedding = openTSNE.TSNEEmbedding(self.coordinates.numpy().copy(), affinities,
                                                 negative_gradient_method="bh", random_state=seed)

    @property
    def points(self) -> torch.Tensor:
        """(R, 2) the reference's positions."""
        return self.coordinates.float()

    def _reduce(self, data):
        return self._pca.transform(data) if self._pca is not None else data

    def place(self, x: torch.Tensor) -> torch.Tensor:
        """(M, P) new vectors -> (M, 2) positions in the fixed map (the reference's own points do not move)."""
        if len(x) == 0 or self._embedding is None:
            return torch.zeros(len(x), 2)
        k = min(PLACE_NEIGHBOURS, len(self.coordinates) - 1)
        placed = self._embedding.transform(self._reduce(x.double().numpy()), perplexity=min(5.0, k / 3), k=k)
        return torch.from_numpy(placed.view(type=np.ndarray).copy()).float()


def summary(values: list[float]) -> dict[str, float]:
    """best / mean / median / min, and the std over models (0 for one model)."""
    t = torch.tensor(values, dtype=torch.float64)
    if len(t) == 0:
        return {"best": None, "mean": None, "median": None, "min": None, "std": None}
    return {"best": t.max().item(), "mean": t.mean().item(), "median": t.quantile(0.5).item(), "min": t.min().item(),
            "std": t.std().item() if len(t) > 1 else 0.0}
