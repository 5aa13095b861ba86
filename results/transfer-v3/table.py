"""The README's transfer tables from the reports in this folder: one row per method and victim.

python results/transfer-v3/table.py [report.json ...]   (default: every *.json here, in name order)
Cells: mean ± std over seeds of the per-seed means (one seed: the mean); "models" is the std over models within a
seed (averaged over seeds); time is the method's wall time per seed on this CPU (beside other jobs: see the note).
"""
import json
import sys
from pathlib import Path


def cell(m, key, digits):
    s = m["spread"][key]
    return f"{s['mean']:.{digits}f}" + (f" ± {s['std']:.{digits}f}" if s["std"] else "")


def rows(path):
    r = json.loads(Path(path).read_text())
    v = r["victim"]
    yield (f"| **{Path(path).stem}** (as-is {v['acc']:.2f} / {v['asr']:.2f}; seeds {' '.join(map(str, r['seeds']))}, "
           f"N {r['n']}) | | | | | | |")
    for name, m in r["methods"].items():
        if not m["acc"]:
            continue
        sec = m.get("seconds") or []
        std = m.get("model_std", {}).get("der")
        yield (f"| {name} | {m['clean_data']} | {cell(m, 'acc', 2)} | {cell(m, 'asr', 2)} | {cell(m, 'der', 3)} | "
               f"{'-' if std is None else f'{std:.3f}'} | {f'{sum(sec) / len(sec):.0f}' if sec else '-'} |")


if __name__ == "__main__":
    paths = sys.argv[1:] or sorted(str(p) for p in Path(__file__).parent.glob("*.json"))
    print("| method | clean data | ACC | ASR | DER | DER std (models) | time s |")
    print("|---|---|---|---|---|---|---|")
    for p in paths:
        for line in rows(p):
            print(line)
