"""Is the accuracy condition followed? An accuracy-conditional bundle asked for validation accuracies across the
range its originals span (and acc=best, and none); each generated set spliced into the clean model and measured on
the validation split (the images the condition is defined on) and on the test split. Spearman's rho between the
asked and the measured validation accuracy, over every set and over the per-value means.

    python experiments/acc_sweep.py [--bundle checkpoints/fmnist-convnet/bundle] [--n 50] [--values 6]
        # writes results/conditions/acc-sweep.json (minutes on a CPU)
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(ROOT))  # from a checkout, uninstalled: pdiff is one folder up
from pdiff.core.files import write_json  # noqa: E402
from pdiff.core.settings import DataSpec, SamplingSpec  # noqa: E402
from pdiff.data.datasets import Split  # noqa: E402
from pdiff.data.plan import RunData  # noqa: E402
from pdiff.generator.locate import load_bundle  # noqa: E402
from pdiff.generator.sampling import draw  # noqa: E402
from pdiff.measure.engine import TargetEngine, measure  # noqa: E402
from pdiff.measure.targets import Target  # noqa: E402


def ranks(values: list[float]) -> torch.Tensor:
    """Ranks from 1, ties given their mean rank."""
    v = torch.tensor(values, dtype=torch.float64)
    order = v.argsort()
    r = torch.empty_like(v)
    r[order] = torch.arange(1, len(v) + 1, dtype=torch.float64)
    for value in v.unique():
        tied = v == value
        r[tied] = r[tied].mean()
    return r


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (the Pearson correlation of the ranks)."""
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", default="checkpoints/fmnist-convnet/bundle")
    ap.add_argument("--n", type=int, default=50, help="sets per asked value")
    ap.add_argument("--values", type=int, default=6, help="asked values, evenly across the range the bundle saw")
    ap.add_argument("--sampler", default="ddpm")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--guidance", type=float, default=None,
                    help="guidance scale (default: the bundle's, chosen on validation; 0 is the unconditional model)")
    ap.add_argument("--out", type=Path, default=None, help="default: results/conditions/acc-sweep[-wG].json")
    args = ap.parse_args()
    bundle = load_bundle(args.bundle)
    suffix = "" if args.guidance is None else f"-w{args.guidance:g}"
    args.out = args.out or ROOT / "results" / "conditions" / f"acc-sweep{suffix}.json"
    c = bundle.conditions
    if c is None or c.kind != "acc":
        raise SystemExit(f"error: {args.bundle} is not an accuracy-conditional bundle (train --condition acc)")
    low, high = c.meta["range"]
    asked = [low + (high - low) * i / (args.values - 1) for i in range(args.values)]
    data = RunData(Split.load(bundle.task.dataset, "test"), Split.load(bundle.task.dataset, "train"), DataSpec())
    clean = Target("clean", bundle.base_state, None)
    engines = {name: TargetEngine(bundle.task, bundle.layout, clean, split)
               for name, split in (("validation", data.validation), ("test", data.test))}
    spec = SamplingSpec(args.n, args.sampler, seed=args.seed, guidance=args.guidance)
    rows = {}
    for condition in [f"acc={a:.4f}" for a in asked] + ["acc=best", "none"]:
        samples = draw(bundle, replace(spec, condition=condition), target_state=bundle.base_state)
        v = samples.vectors[samples.finite]
        rows[condition] = {split: measure(e, {"g": v}, reference=None)["metrics"]["g"]["acc"] for split, e in engines.items()}
        print(condition, {k: round(sum(a) / len(a), 2) for k, a in rows[condition].items()}, flush=True)
    # the ceiling of any accuracy condition on one trajectory: how well the originals' validation accuracy (what the
    # condition is) ranks their test accuracy
    originals = {split: measure(e, {"o": bundle.originals}, reference=None)["metrics"]["o"]["acc"]
                 for split, e in engines.items()}
    swept = [f"acc={a:.4f}" for a in asked]
    per_set = ([a for a, k in zip(asked, swept) for _ in rows[k]["validation"]],
               [x for k in swept for x in rows[k]["validation"]])
    means = [sum(rows[k]["validation"]) / len(rows[k]["validation"]) for k in swept]
    test_per_set = [x for k in swept for x in rows[k]["test"]]
    test_means = [sum(rows[k]["test"]) / len(rows[k]["test"]) for k in swept]
    write_json(args.out, {
        "bundle": str(args.bundle), "n_per_value": args.n, "sampler": args.sampler, "seed": args.seed,
        "guidance": c.meta.get("guidance") if args.guidance is None else args.guidance, "validation_range": [low, high], "asked": asked,
        "validation_size": len(data.validation.labels), "measured": rows,
        "originals_validation": {"mean": c.values.mean().item(), "best": high, "worst": low},
        "originals_measured": originals,
        "originals_spearman_validation_test": spearman(originals["validation"], originals["test"]),
        "spearman_per_set": spearman(*per_set),
        "spearman_test_per_set": spearman(per_set[0], test_per_set), "spearman_test_of_means": spearman(asked, test_means), "spearman_of_means": spearman(asked, means),
        "command": "python experiments/acc_sweep.py " + " ".join(sys.argv[1:])})
    print(f"spearman per set {spearman(*per_set):.3f}, of means {spearman(asked, means):.3f}")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
