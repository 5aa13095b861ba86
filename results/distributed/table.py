"""The table of docs/distributed.md from bench/distributed.py's JSON (results/distributed/bench.json).

python results/distributed/table.py [--write]
Made by: python bench/distributed.py [--quick] > results/distributed/bench.json
"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE.parent)]
import tables  # noqa: E402

PAGE = tables.DOCS / "distributed.md"
SOURCE = HERE / "bench.json"
WHAT = {"collect": "collect, {trunks} trunks from scratch", "evaluate": "evaluate, N = {n}",
        "train": "train, {ae_steps} + {ddpm_steps} steps"}


def table() -> str:
    if not SOURCE.exists():
        return "(no measurement yet: python bench/distributed.py > results/distributed/bench.json)"
    b = json.loads(SOURCE.read_text())
    lines = [f"On this machine ({b['device']}, {b['backend']}, {b['threads_per_rank']} thread per rank"
             + (f"; {b['note']}" if b.get("note") else "") + "):", "",
             "| command | one process (s) | two ranks (s) | speed-up | same result as one process |",
             "|---|---|---|---|---|"]
    for stage, fmt in WHAT.items():
        r = b[stage]
        lines.append(f"| {fmt.format(**r)} | {r['one_s']:.1f} | {r['two_ranks_s']:.1f} | {r['speedup']:.2f}x | "
                     f"{'identical' if r['identical'] else ('statistically equal, by design' if stage == 'train' else 'NOT identical')} |")
    return "\n".join(lines)


TABLES = {"distributed": table}

if __name__ == "__main__":
    tables.main({name: (PAGE, build) for name, build in TABLES.items()})
