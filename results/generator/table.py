"""Print the README's generator table from the reports run.sh writes (python results/generator/table.py)."""
import json
from pathlib import Path

HERE = Path(__file__).parent


def curve_at(points, x):
    """Accuracy of a baseline curve [(max_iou, acc), ...] at max-IoU x, linearly interpolated."""
    pts = sorted(points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def row(name, r):
    nov, g = r["novelty"], r["novelty"]["generated"]
    gauss = [(v["max_iou_mean"], v["acc_mean"]) for k, v in nov.items() if k.startswith("gaussian_t") and k != "gaussian_t0"]
    gauss.append((nov["average"]["max_iou_mean"], nov["average"]["acc_mean"]))
    noise = [(nov[k]["max_iou_mean"], nov[k]["acc_mean"]) for k in ("noise_0.01", "noise_0.05", "noise_0.15")]
    noise.append((1.0, nov["originals"]["acc_mean"]))  # sigma 0: the originals themselves
    cells = [g["acc_mean"], g["acc_std"], g["self_iou"], g["max_iou_mean"], g["coverage"],
             curve_at(gauss, g["max_iou_mean"]), curve_at(noise, g["max_iou_mean"])]
    fmt = [".2f", ".3f", ".3f", ".3f", ".2f", ".2f", ".2f"]
    sel = (r.get("validation") or {}).get("selected", {}).get("generated", {})
    return (f"| {name} | " + " | ".join("-" if c is None else f"{c:{f}}" for c, f in zip(cells, fmt))
            + f" | {sel.get('test_acc', float('nan')):.2f} |")


print("| bundle, seed | acc mean | acc std | IoU within (gg) | max-IoU to originals | coverage "
      "| Gaussian curve at that max-IoU | noise curve at that max-IoU | chosen on validation: test acc |")
print("|---|---|---|---|---|---|---|---|---|")
for f in sorted(HERE.glob("*-seed*.json")):
    print(row(f.stem, json.loads(f.read_text())))
for task in ("default", "deep"):  # each task's baselines, from its seed-0 report
    path = HERE / f"{task}-seed0.json"
    if not path.exists():
        continue
    r = json.loads(path.read_text())["novelty"]
    o = r["originals"]
    k_orig = {"default": 200, "deep": 40}[task]
    print(f"| {task}: originals (K = {k_orig}) | {o['acc_mean']:.2f} | {o['acc_std']:.3f} | {o['self_iou']:.3f} | "
          f"nearest other {o['nearest_other_iou_mean']:.3f} | - | - | - | - |")
    for k in ("average", "average-16", "gaussian", "gaussian_t0.25", "gaussian_t0.5", "gaussian_t1.5", "interpolation",
              "noise_0.05"):
        if k not in r:
            continue
        v = r[k]
        print(f"| {task}: {k} | {v['acc_mean']:.2f} | {v['acc_std']:.3f} | "
              f"{'-' if v['self_iou'] is None else format(v['self_iou'], '.3f')} | "
              f"{v['max_iou_mean']:.3f} | {v['coverage']:.2f} | - | - | - |")
