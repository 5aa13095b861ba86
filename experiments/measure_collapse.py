"""Issue 12: is a generator collapsed to the average? Measures on the default task (clean base, full 10k test set).

For a set of parameter vectors: accuracy mean / min / std, mean pairwise IoU of wrong-prediction sets within
the set (gg), mean max-IoU to the K originals, coverage (share of originals with a model of the set closer to
them than their nearest other original); for reconstructions also IoU to their own original and the share
closer to another original. Baselines: the originals, their average, per-number Gaussians at temperature tau.

    python experiments/measure_collapse.py [BUNDLE ...]   # baselines, then each bundle's reconstructions
                                                          # and DDPM-1000 samples (N = 200, seed 0)
As a library: ctx = Ctx(); ctx.metrics(vectors); latent_report(bundle).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[1]  # the repository
sys.path.insert(0, str(ROOT))

from pdiff.bundle import Bundle  # noqa: E402
from pdiff.collect import Split  # noqa: E402
from pdiff.data import load_split  # noqa: E402
from pdiff.evaluate import BatchedEvaluator, accuracies, iou_matrix, mean_offdiag  # noqa: E402
from pdiff.params import denormalize, normalize  # noqa: E402
from pdiff.splice import stacked_params  # noqa: E402
from pdiff.targets import check_architecture  # noqa: E402
from pdiff.train import load_collection  # noqa: E402

COLL = ROOT / "checkpoints/fmnist-convnet"


class Ctx:
    def __init__(self, coll=COLL):
        from pdiff.params import flatten
        self.c = load_collection(coll)
        self.layout = self.c["layout"]
        self.base = self.c["base"]
        self.names = [n for n, _ in self.layout]
        self.originals = flatten(self.c["params"], self.layout).float()
        images, labels = load_split("fashion-mnist", "test")
        self.test = Split(images, labels, "fashion-mnist")
        self.ev = BatchedEvaluator(check_architecture(self.c["task"], self.base), self.test.normalized(), self.names)
        self.o = self.run(self.originals)
        ioo = iou_matrix(self.o["wrong"], self.o["wrong"])
        self.ioo = ioo
        self.oo_nearest = (ioo - 2 * torch.eye(len(ioo), dtype=ioo.dtype)).max(1).values  # (K,) nearest other
        self.oo_mean = mean_offdiag(ioo)

    def run(self, vectors):
        pred = self.ev.predict_many(stacked_params(vectors, self.layout, self.base))
        return {"acc": torch.tensor(accuracies(pred, self.test.labels)), "wrong": pred != self.test.labels[None]}

    def metrics(self, vectors, own=False) -> dict:
        """own=True: row k of vectors is a reconstruction of original k (adds own-IoU figures)."""
        r = self.run(vectors)
        acc, w = r["acc"], r["wrong"]
        gg = iou_matrix(w, w)
        go = iou_matrix(w, self.o["wrong"])  # (N, K)
        out = {"n": len(vectors), "acc_mean": acc.mean().item(), "acc_std": acc.std().item(),
               "acc_max": acc.max().item(), "acc_min": acc.min().item(), "gg_iou": mean_offdiag(gg) if len(w) > 1 else None,
               "maxiou_mean": go.max(1).values.mean().item(), "go_iou": go.mean().item(),
               "coverage": (go.max(0).values > self.oo_nearest).double().mean().item()}
        if own:
            own_iou = go.diagonal()
            other = (go - 2 * torch.eye(len(go), dtype=go.dtype)).max(1).values
            out.update(own_iou=own_iou.mean().item(), closer_to_other=(other > own_iou).double().mean().item(),
                       acc_abs_diff=(acc - self.o["acc"]).abs().mean().item())
        return out

    def originals_metrics(self) -> dict:
        acc = self.o["acc"]
        return {"n": len(acc), "acc_mean": acc.mean().item(), "acc_std": acc.std().item(), "acc_max": acc.max().item(),
                "gg_iou": self.oo_mean, "nearest_other_iou": self.oo_nearest.mean().item()}

    def gaussian(self, tau, n=200, seed=0):
        g = torch.Generator().manual_seed(seed)
        mu, sd = self.originals.mean(0), self.originals.std(0)
        return mu + tau * sd * torch.randn(n, mu.shape[0], generator=g)


def bundle_recon(bundle: Bundle) -> torch.Tensor:
    ae = bundle.autoencoder.eval()
    x = normalize(bundle.originals, bundle.norm_mean, bundle.norm_std, bundle.layout)
    with torch.no_grad():
        return denormalize(ae.decode(ae.encode(x)), bundle.norm_mean, bundle.norm_std, bundle.layout)


def bundle_sample(bundle: Bundle, n=200, seed=0, sampler="ddpm", steps=None):
    from pdiff.sample import sample
    t0 = time.perf_counter()
    v = sample(bundle, n, sampler, steps, torch.Generator().manual_seed(seed))
    return v, time.perf_counter() - t0


def fmt(name, m):
    def f(k, p=3):
        v = m.get(k)
        return "   -  " if v is None else f"{v:.{p}f}"
    return (f"{name:38s} acc {f('acc_mean', 2)} min {f('acc_min', 2)} std {f('acc_std')} gg {f('gg_iou')} maxIoU {f('maxiou_mean')} "
            f"cov {f('coverage', 2)}" + (f" own {f('own_iou')} other>own {f('closer_to_other', 2)} |dacc| {f('acc_abs_diff')}"
                                          if "own_iou" in m else ""))


def main(bundles):
    ctx = Ctx()
    res = {"originals": ctx.originals_metrics()}
    print(f"originals: {json.dumps(res['originals'])}")
    res["average"] = ctx.metrics(ctx.originals.mean(0, keepdim=True))
    print(fmt("average", res["average"]))
    for tau in (0.1, 0.25, 0.5, 1.0):
        res[f"gaussian_{tau}"] = m = ctx.metrics(ctx.gaussian(tau))
        print(fmt(f"gaussian tau={tau}", m))
    for b in bundles:
        bundle = Bundle.load(b)
        res[f"{b}:recon"] = m = ctx.metrics(bundle_recon(bundle), own=True)
        print(fmt(f"{Path(b).name} recon", m))
        v, s = bundle_sample(bundle)
        res[f"{b}:ddpm1000"] = m = {**ctx.metrics(v), "sample_s": s}
        print(fmt(f"{Path(b).name} ddpm1000", m), f"({s:.1f}s)")
    return res


if __name__ == "__main__":
    out = main(sys.argv[1:])
    print(json.dumps(out, indent=1))


@torch.no_grad()
def latent_report(bundle: Bundle, n=200, seed=0) -> dict:
    """Encoded originals' latents vs the DDPM's generated latents, in the DDPM's (standardised) space:
    per-dimension std, and the variance ratio along the encoded latents' principal axes."""
    ae = bundle.autoencoder.eval()
    x = normalize(bundle.originals, bundle.norm_mean, bundle.norm_std, bundle.layout)
    z = ae.encode(x)
    zs = ((z - torch.as_tensor(bundle.latent_mean)) / torch.as_tensor(bundle.latent_std)).flatten(1)
    g = torch.Generator().manual_seed(seed)
    zg = bundle.diffusion.sample(bundle.denoiser.eval(), (n, *ae.latent_shape), "ddpm", None, g).flatten(1)
    sd_o, sd_g = zs.std(0), zg.std(0)
    c = zs - zs.mean(0)
    _, S, V = torch.linalg.svd(c, full_matrices=False)
    var_o = (c @ V.T).var(0)
    var_g = ((zg - zs.mean(0)) @ V.T).var(0)
    ratio = (var_g / var_o)
    ev = S**2 / (S**2).sum()
    return {"raw_latent_std": z.std().item(), "raw_latent_dim_std_min": z.std(0).min().item(),
            "raw_latent_dim_std_max": z.std(0).max().item(),
            "latent_noise_over_dim_std_median": (bundle.ae_cfg.latent_noise / z.std(0)).median().item(),
            "std_dims_mean_abs": zs.mean(0).abs().mean().item(),
            "std_dims_std_min": sd_o.min().item(), "std_dims_std_median": sd_o.median().item(),
            "std_dims_std_max": sd_o.max().item(),
            "gen_over_orig_std_per_dim_median": (sd_g / sd_o).median().item(),
            "gen_mean_offset_over_std": ((zg.mean(0) - zs.mean(0)).abs() / sd_o).median().item(),
            "pc1_share": ev[0].item(), "pc_var_ratio_top1": ratio[0].item(),
            "pc_var_ratio_2_10": ratio[1:10].mean().item(), "pc_var_ratio_11_50": ratio[10:50].mean().item(),
            "nn_dist_gen_to_orig_over_oo": (torch.cdist(zg, zs).min(1).values.mean()
                                            / (torch.cdist(zs, zs) + 1e9 * torch.eye(len(zs))).min(1).values.mean()).item()}

