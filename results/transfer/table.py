"""The transfer table of docs/transfer.md from the reports run.sh writes: one block of rows per shipped victim.

python results/transfer/table.py [transfer] [--write]
Cells are the means over each method's models (one seed, 0: the seed-dependent methods drew one clean budget);
"DER std (models)" is the spread over a method's models within that seed.
"""
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent.parent)]  # results/ (tables) and the checkout (pdiff)
import tables  # noqa: E402

from pdiff.studies.formats import read  # noqa: E402

PAGE = tables.DOCS / "transfer.md"
VICTIMS = ("finetuned-badnets", "finetuned-blended", "scratch-badnets", "scratch-blended")


def _fmt(value, digits):
    return "-" if value is None else f"{value:.{digits}f}"


def transfer() -> str:
    lines = ["| method | clean images | model images | checkpoints | ACC | ASR | RA | DER | DER std (models) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for victim in VICTIMS:
        path = HERE / f"{victim}.json"
        if not path.exists():
            lines.append(f"| **{victim}**: not measured (results/transfer/run.sh) | | | | | | | | |")
            continue
        r = read(path)
        v = r["victim"]
        lines.append(f"| **{victim}** (as it is: ACC {v['acc']:.2f}, ASR {v['asr']:.2f}; seed "
                     f"{' '.join(map(str, r['seeds']))}, N {r['settings']['sampling']['n']}) | | | | | | | | |")
        for name, m in r["sources"].items():
            if not m["acc"]:
                continue
            res = m.get("clean_resources", {})
            ledger = [res.get("images"), res.get("model_images"), res.get("checkpoints")]
            cells = [_fmt(m["spread"][k]["mean"], d) for k, d in (("acc", 2), ("asr", 2), ("ra", 2), ("der", 3))]
            lines.append(f"| {name} | " + " | ".join("-" if c is None else str(c) for c in ledger) + " | "
                         + " | ".join(cells) + f" | {_fmt(m.get('model_std', {}).get('der'), 3)} |")
    return "\n".join(lines)


TABLES = {"transfer": transfer}

if __name__ == "__main__":
    tables.main({name: (PAGE, build) for name, build in TABLES.items()})
