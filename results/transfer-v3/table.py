"""The transfer tables of docs/transfer.md from the reports in this folder: one row per method and victim.

python results/transfer-v3/table.py [transfer-shallow|transfer-shrink|transfer-sweep] [--write]
Cells: mean ± std over seeds of the per-seed means (one seed: the mean); "models" is the std over models within a
seed (averaged over seeds); time is the method's wall time per seed on this CPU (beside other jobs: see the note).
"""
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent.parent)]  # results/ (tables) and the checkout (pdiff)
import tables  # noqa: E402

from pdiff.studies.formats import read  # noqa: E402

PAGE = tables.DOCS / "transfer.md"


def cell(m, key, digits):
    s = m["spread"][key]
    return f"{s['mean']:.{digits}f}" + (f" ± {s['std']:.{digits}f}" if s["std"] else "")


def rows(path):
    r = read(path)
    v = r["victim"]
    shrink = r.get("stitch", {}).get("shrink_budget_acc") and f"; stitch shrink {r['stitch']['shrink']:g}, chosen on the budget"
    yield (f"| **{Path(path).stem}** (as-is {v['acc']:.2f} / {v['asr']:.2f}; seeds {' '.join(map(str, r['seeds']))}, "
           f"N {r['n']}{shrink or ''}) | | | | | | | |")
    for name, m in r["methods"].items():
        if not m["acc"]:
            continue
        sec = m.get("seconds") or []
        std = m.get("model_std", {}).get("der")
        yield (f"| {name} | {m['clean_data']} | {cell(m, 'acc', 2)} | {cell(m, 'asr', 2)} | {cell(m, 'ra', 2)} | {cell(m, 'der', 3)} | "
               f"{'-' if std is None else f'{std:.3f}'} | {f'{sum(sec) / len(sec):.0f}' if sec else '-'} |")


SWEEP_METHODS = ("generated", "clean-layers", "stitch+generated", "ft", "fp")


def sweep():
    """The poisoning-rate sweep: each victim's DER per method at 1 %, 5 % (one seed, N 50) and 10 % (the shipped
    victims: the mean over seeds 0, 1, 2, N 200)."""
    lines = ["| victim | rate | as-is ACC / ASR | " + " | ".join(f"{m} DER" for m in SWEEP_METHODS) + " |",
             "|---|---|---|" + "---|" * len(SWEEP_METHODS)]
    for kind in ("finetuned", "scratch"):
        for rate, name in (("1 %", f"sweep-{kind}-badnets-1pct"), ("5 %", f"sweep-{kind}-badnets-5pct"),
                           ("10 %", f"shallow-{kind}-badnets")):
            path = HERE / f"{name}.json"
            if not path.exists():
                lines.append(f"| {kind} BadNets | {rate} | not measured |" + " |" * len(SWEEP_METHODS))
                continue
            r = read(path)
            v = r["victim"]
            cells = [f"{r['methods'][m]['spread']['der']['mean']:.3f}" if m in r["methods"] else "-" for m in SWEEP_METHODS]
            lines.append(f"| {kind} BadNets | {rate} | {v['acc']:.2f} / {v['asr']:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def methods_table(prefix):
    """Every report whose name starts with `prefix`, in name order: one block of rows per victim."""
    lines = ["| method | clean data | ACC | ASR | RA | DER | DER std (models) | time s |",
             "|---|---|---|---|---|---|---|---|"]
    for path in sorted(HERE.glob(f"{prefix}*.json")):
        lines += rows(path)
    return "\n".join(lines)


TABLES = {**{f"transfer-{name}": (lambda name=name: methods_table(name)) for name in ("shallow", "shrink")},
          "transfer-sweep": sweep}

if __name__ == "__main__":
    tables.main({name: (PAGE, build) for name, build in TABLES.items()})
