"""The generator-against-baselines tables of docs/memorisation.md, from the reports run.sh writes.

python results/generator/table.py [generator] [--write]
"""
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent.parent)]  # results/ (tables) and the checkout (pdiff)
import tables  # noqa: E402

from pdiff.studies.formats import read  # noqa: E402

PAGE = tables.DOCS / "memorisation.md"
BASELINES = ("average", "average-16", "gaussian", "gaussian_t0.25", "gaussian_t0.5", "gaussian_t1.5", "interpolation",
             "noise_0.05")
HEADER = ["| bundle, seed | acc mean | acc std | IoU within (gg) | max-IoU to originals | coverage "
          "| Gaussian curve at that max-IoU | noise curve at that max-IoU | chosen on validation: test acc |",
          "|---|---|---|---|---|---|---|---|---|"]


def row(name, r, sweep):
    """One generated set's row; the curves come from `sweep`, the report holding the seed's baselines."""
    nov, g = sweep["novelty"], r["novelty"]["generated"]
    gauss = [(v["max_iou_mean"], v["acc_mean"]) for k, v in nov.items() if k.startswith("gaussian_t") and k != "gaussian_t0"]
    gauss = gauss and gauss + [(nov["average"]["max_iou_mean"], nov["average"]["acc_mean"])]
    noise = [(nov[k]["max_iou_mean"], nov[k]["acc_mean"]) for k in ("noise_0.01", "noise_0.05", "noise_0.15")]
    noise.append((1.0, nov["originals"]["acc_mean"]))  # sigma 0: the originals themselves
    cells = [g["acc_mean"], g["acc_std"], g["self_iou"], g["max_iou_mean"], g["coverage"],
             tables.curve_at(gauss, g["max_iou_mean"]), tables.curve_at(noise, g["max_iou_mean"])]
    fmt = [".2f", ".3f", ".3f", ".3f", ".2f", ".2f", ".2f"]
    sel = (r.get("validation") or {}).get("selected", {}).get("generated", {})
    return (f"| {name} | " + " | ".join("-" if c is None else f"{c:{f}}" for c, f in zip(cells, fmt))
            + f" | {sel.get('test_acc', float('nan')):.2f} |")


def baseline_rows(task):
    """The task's originals and baselines, from its seed-0 report."""
    path = HERE / f"{task}-seed0.json"
    if not path.exists():
        return []
    r = read(path)["novelty"]
    o = r["originals"]
    k = 200
    lines = [f"| {task}: originals (K = {k}) | {o['acc_mean']:.2f} | {o['acc_std']:.3f} | {o['self_iou']:.3f} | "
             f"nearest other {o['nearest_other_iou_mean']:.3f} | - | - | - | - |"]
    for name in (b for b in BASELINES if b in r):
        v = r[name]
        within = "-" if v["self_iou"] is None else format(v["self_iou"], ".3f")
        lines.append(f"| {task}: {name} | {v['acc_mean']:.2f} | {v['acc_std']:.3f} | {within} | "
                     f"{v['max_iou_mean']:.3f} | {v['coverage']:.2f} | - | - | - |")
    return lines


def generator():
    """One row per report (each seed's curves from that seed's own sweep; a report without a sweep, such as the
    DDIM-50 one, takes the seed-0 sweep), then the baselines."""
    lines = list(HEADER)
    for f in sorted(HERE.glob("*-seed*.json")):
        r = read(f)
        own = any(k.startswith("gaussian_t") for k in r["novelty"])
        lines.append(row(f.stem, r, r if own else read(HERE / "default-seed0.json")))
    lines += baseline_rows("default")
    return "\n".join(lines)


TABLES = {"generator": generator}

if __name__ == "__main__":
    tables.main({name: (PAGE, build) for name, build in TABLES.items()})
