"""The leave-one-trunk-out table of docs/trunks.md from the reports in this folder: one row per trunk mode and source.

python results/loto/table.py [loto] [--write]
Cells: mean ± std over seeds 0, 1, 2 of the per-seed mean accuracy (the held-out trunk and the checkpoints do not
depend on the seed: one value); "models" is the std over models within a seed, averaged over seeds; "within 2" the
share of models within 2 points of the held-out trunk as it is (pooled over seeds).
"""
import sys
from pathlib import Path
from statistics import mean, stdev

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent.parent)]  # results/ (tables) and the checkout (pdiff)
import tables  # noqa: E402

from pdiff.studies.formats import read  # noqa: E402

PAGE = tables.DOCS / "trunks.md"

SOURCES = ("trunk_as_is", "own_checkpoints", "other_trunks_checkpoints", "generated", "stitch+clean-layers",
           "stitch+generated")


def cell(values, digits=2):
    return f"{mean(values):.{digits}f}" + (f" ± {stdev(values):.{digits}f}" if len(values) > 1 and stdev(values) else "")


def loto():
    lines = ["| trunks | source | n | accuracy | std (models) | within 2 |", "|---|---|---|---|---|---|"]
    for mode in ("reinit", "scratch"):
        reports = [read(p) for p in sorted(HERE.glob(f"{mode}-seed*.json"))]
        if not reports:
            lines.append(f"| {mode} | not measured | | | | |")
            continue
        r0 = reports[0]
        lines.append(f"| **{mode}** (held-out trunk {r0['held_out_trunk']}, trained on {r0['trained_on_trunks']}; seeds "
                     f"{' '.join(str(r['seed']) for r in reports)}; stitch R² "
                     f"{cell([r['stitch']['r2'] for r in reports], 3)}) | | | | | |")
        for source in SOURCES:
            means = [r[source]["summary"]["mean"] for r in reports]
            stds = [r[source]["summary"]["std"] for r in reports]
            accs = [a for r in reports for a in r[source]["acc"]]
            near = sum(a >= r0["trunk_acc"] - 2 for a in accs) / len(accs)
            lines.append(f"| | {source} | {len(r0[source]['acc'])} | {cell(means)} | {mean(stds):.2f} | {near:.0%} |")
    return "\n".join(lines)


TABLES = {"loto": loto}

if __name__ == "__main__":
    tables.main({name: (PAGE, build) for name, build in TABLES.items()})
