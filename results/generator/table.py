"""The generator-against-baselines table of docs/memorisation.md: the shipped default bundle sampled unconditionally
(`--condition none`), from the reports run.sh writes (seed 0 is results/conditions/acc-none-seed0.json, made by the
same command in results/conditions/run.sh).

python results/generator/table.py [generator] [--write]
"""
import re
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent.parent)]  # results/ (tables) and the checkout (pdiff)
import tables  # noqa: E402

from pdiff.studies.formats import read  # noqa: E402

PAGE = tables.DOCS / "memorisation.md"
SEED0 = HERE.parent / "conditions" / "acc-none-seed0.json"
RUNS = {"DDPM-1000, seed 0": SEED0, "DDPM-1000, seed 1": HERE / "none-seed1.json",
        "DDPM-1000, seed 2": HERE / "none-seed2.json", "DDIM-50, seed 0": HERE / "none-ddim50-seed0.json"}
BASELINES = ("average", "average-16", "gaussian", "gaussian_t0.25", "gaussian_t0.5", "gaussian_t1.5", "interpolation",
             "noise_0.05")
HEADER = ["| generated (seed) | acc mean | acc std | IoU within (gg) | max-IoU to originals | coverage "
          "| Gaussian curve at that max-IoU | noise curve at that max-IoU | chosen on validation: test acc |",
          "|---|---|---|---|---|---|---|---|---|"]


def _plain_gaussian(nov: dict) -> list:
    """The per-number Gaussian's accuracy-novelty curve over its temperatures (t0 is the average), without the top-q
    Gaussians a conditional bundle's reports add."""
    return [(v["max_iou_mean"], v["acc_mean"]) for k, v in nov.items() if re.fullmatch(r"gaussian_t[\d.]+", k)]


def row(name, r, sweep):
    """One generated set's row; the curves come from `sweep`, the report holding the seed's baselines."""
    nov, g = sweep["novelty"], r["novelty"]["generated"]
    noise = [(nov[k]["max_iou_mean"], nov[k]["acc_mean"]) for k in ("noise_0.01", "noise_0.05", "noise_0.15")]
    noise.append((1.0, nov["originals"]["acc_mean"]))  # sigma 0: the originals themselves
    cells = [g["acc_mean"], g["acc_std"], g["self_iou"], g["max_iou_mean"], g["coverage"],
             tables.curve_at(_plain_gaussian(nov), g["max_iou_mean"]), tables.curve_at(noise, g["max_iou_mean"])]
    fmt = [".2f", ".3f", ".3f", ".3f", ".2f", ".2f", ".2f"]
    sel = (r.get("validation") or {}).get("selected", {}).get("generated", {})
    return (f"| {name} | " + " | ".join("-" if c is None else f"{c:{f}}" for c, f in zip(cells, fmt))
            + f" | {sel.get('test_acc', float('nan')):.2f} |")


def baseline_rows(r):
    """The originals and the baselines of the seed-0 report."""
    nov = r["novelty"]
    o = nov["originals"]
    lines = [f"| originals (K = {len(r['sources']['originals']['acc'])}) | {o['acc_mean']:.2f} | {o['acc_std']:.3f} | "
             f"{o['self_iou']:.3f} | nearest other {o['nearest_other_iou_mean']:.3f} | - | - | - | - |"]
    for name in (b for b in BASELINES if b in nov):
        v = nov[name]
        within = "-" if v["self_iou"] is None else format(v["self_iou"], ".3f")
        lines.append(f"| {name} | {v['acc_mean']:.2f} | {v['acc_std']:.3f} | {within} | "
                     f"{v['max_iou_mean']:.3f} | {v['coverage']:.2f} | - | - | - |")
    return lines


def generator():
    """One row per report (each seed's curves from that seed's own sweep; the DDIM-50 report, which has none, takes
    seed 0's), then seed 0's originals and baselines."""
    lines = list(HEADER)
    seed0 = read(SEED0)
    for name, path in RUNS.items():
        if not path.exists():
            lines.append(f"| {name}: not measured (results/generator/run.sh) |" + " |" * 8)
            continue
        r = read(path)
        lines.append(row(name, r, r if _plain_gaussian(r["novelty"]) else seed0))
    return "\n".join(lines + baseline_rows(seed0))


TABLES = {"generator": generator}

if __name__ == "__main__":
    tables.main({name: (PAGE, build) for name, build in TABLES.items()})
