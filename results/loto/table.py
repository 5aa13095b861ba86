"""The README's leave-one-trunk-out table from the reports in this folder: one row per trunk mode and source.

python results/loto/table.py
Cells: mean ± std over seeds 0, 1, 2 of the per-seed mean accuracy (the held-out trunk and the checkpoints do not
depend on the seed: one value); "models" is the std over models within a seed, averaged over seeds; "within 2" the
share of models within 2 points of the held-out trunk as it is (pooled over seeds).
"""
import json
from pathlib import Path
from statistics import mean, stdev

SOURCES = ("trunk_as_is", "own_checkpoints", "other_trunks_checkpoints", "generated", "stitch+clean-layers",
           "stitch+generated")


def cell(values, digits=2):
    return f"{mean(values):.{digits}f}" + (f" ± {stdev(values):.{digits}f}" if len(values) > 1 and stdev(values) else "")


def main():
    here = Path(__file__).parent
    print("| trunks | source | n | accuracy | std (models) | within 2 |")
    print("|---|---|---|---|---|---|")
    for mode in ("reinit", "scratch"):
        reports = [json.loads(p.read_text()) for p in sorted(here.glob(f"{mode}-seed*.json"))]
        if not reports:
            print(f"| {mode} | not measured | | | | |")
            continue
        r0 = reports[0]
        print(f"| **{mode}** (held-out trunk {r0['held_out_trunk']}, trained on {r0['trained_on_trunks']}; seeds "
              f"{' '.join(str(r['seed']) for r in reports)}; stitch R² {cell([r['stitch']['r2'] for r in reports], 3)}) "
              "| | | | | |")
        for source in SOURCES:
            means = [r[source]["summary"]["mean"] for r in reports]
            stds = [r[source]["summary"]["std"] for r in reports]
            accs = [a for r in reports for a in r[source]["acc"]]
            near = sum(a >= r0["trunk_acc"] - 2 for a in accs) / len(accs)
            print(f"| | {source} | {len(r0[source]['acc'])} | {cell(means)} | {mean(stds):.2f} | {near:.0%} |")


if __name__ == "__main__":
    main()
