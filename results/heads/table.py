"""The tables of docs/heads.md from the reports results/heads/run.sh writes.

python results/heads/table.py [heads8-k5|heads8-ks|heads8-curve|heads-k5|heads-ks|heads-curve] [--write]
"""
import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent.parent)]  # results/ (tables) and the checkout (pdiff)
import tables  # noqa: E402

PAGE = tables.DOCS / "heads.md"
# the generators, each trained on trunks 0-15 and asked for held-out trunks 16-19
VARIANTS = (("t16-a", "class means + pool statistics"), ("t16-rm", "+ refined means, matched prior"),
            ("t16-rmq", "+ match quality"))
GENERATED = ("generated", "generator_mean")
CONTROLS = ("nearest_mean", "nearest_mean_pool", "probe", "lda", "lda_pool", "self_trained", "stitch",
            "stitch_ensemble", "matched_average")
CHECKS = ("unconditional", "swap", "random")  # the generator's own checks; retrieval needs no generator
RETRIEVAL = ("retrieval", "retrieval_matched")
CURVE = ("curve-t4", "curve-t8", "t16-rmq", "curve-t22")  # trunks 0-3, 0-7, 0-15, 0-15 and the zoo's 20-25
# the shipped generator, trained on trunks 0-15 and the zoo's 20-43, asked for held-out trunks 16-19 and 44-47
VARIANTS8 = (("t40-rmq", "40 training trunks"),)
CURVE8 = ("curve8-t16", "curve8-t32", "t40-rmq")  # trunks 0-15; 0-15 and 20-35; 0-15 and 20-43
# `python -m pdiff heads` with the shipped generator on models of other loops (one report each)
OTHER = (("other-fmnist-convnet-base", "the default bundle's base (collect, 8 epochs, 55,000 images)"),
         ("other-budget-base", "the budget donor's base (collect, 3,000 images)"))


def _read(name: str) -> dict | None:
    path = HERE / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _ledger(source: dict) -> str:
    return f"{source['ledger']['labelled']} / {source['ledger']['unlabelled']}"


def _reports(variants) -> list[tuple[str, str, dict]]:
    return [(name, label, r) for name, label in variants if (r := _read(name)) is not None]


def _rows(reports, cells) -> list[str]:
    """Every row of one K: the originals, each generator's sets and mean, the controls, the checks."""
    first = reports[0][2]
    rows = [cells("own head", first, "own_head"), cells("own checkpoints", first, "own_checkpoints")]
    for name, label, r in reports:
        rows += [cells(f"generated ({label})", r, "generated"), cells(f"generator mean ({label})", r, "generator_mean")]
    rows += [cells(c, first, c) for c in CONTROLS]
    for name, label, r in reports:
        rows += [cells(f"{c} ({label})", r, c) for c in CHECKS]
    rows += [cells(c, first, c) for c in RETRIEVAL]
    return [row for row in rows if row]


def k5_table(variants) -> str:
    """K = 5, every held-out trunk: each source's mean test accuracy, and its ledger (labelled / unlabelled)."""
    reports = _reports(variants)
    if not reports:
        return "(no reports yet: results/heads/run.sh makes them)"
    held = reports[0][2]["held_out"]

    def cells(label, r, source):
        if source not in r["summary"]["5"]:
            return None
        per = " | ".join(f"{r['trunks'][h]['k']['5'][source]['mean']:.2f}" for h in held)
        return f"| {label} | {_ledger(r['trunks'][held[0]]['k']['5'][source])} | {per} | {r['summary']['5'][source]:.2f} |"

    head = [f"K = 5 shots per class, a pool of {reports[0][2]['draw']['pool']} unlabelled images; "
            f"N = {reports[0][2]['spec']['n']} sets ({reports[0][2]['spec']['sampler']}-{reports[0][2]['spec']['steps']}), "
            f"guidance {reports[0][2]['spec']['guidance']:g}; test accuracy (%).", "",
            "| source | labelled / unlabelled | " + " | ".join(held) + " | mean |",
            "|---|---|" + "---|" * (len(held) + 1)]
    return "\n".join(head + _rows(reports, cells))


def ks_table(variants) -> str:
    """Each source's mean over the held-out trunks at every K."""
    reports = _reports(variants)
    if not reports:
        return "(no reports yet: results/heads/run.sh makes them)"
    ks = list(reports[0][2]["summary"])

    def cells(label, r, source):
        if source not in r["summary"][ks[0]]:
            return None  # the checks run at one K only: the K = 5 table has them
        return f"| {label} | " + " | ".join(f"{r['summary'][k][source]:.2f}" for k in ks) + " |"

    head = ["Mean test accuracy (%) over the held-out trunks " + ", ".join(reports[0][2]["held_out"]) + ".", "",
            "| source | " + " | ".join(f"K = {k}" for k in ks) + " |", "|---|" + "---|" * len(ks)]
    return "\n".join(head + _rows(reports, cells))


def curve_table(names) -> str:
    """K = 5: the generator (refined means, matched prior, match quality) against the number of trunks it was
    trained on."""
    rows = []
    for name in names:
        r = _read(name)
        if r is None:
            continue
        s = r["summary"]["5"]
        best = max(CONTROLS, key=lambda c: s[c])
        rows.append(f"| {len(r['donors'])} | {s['generated']:.2f} | {s['generator_mean']:.2f} | {s['matched_average']:.2f} "
                    f"| {s['stitch_ensemble']:.2f} | {best} {s[best]:.2f} | {s['own_head']:.2f} |")
    if not rows:
        return "(no curve yet: results/heads/run.sh makes it)"
    return "\n".join(["| training trunks | generated | generator mean | matched_average | stitch_ensemble | best control "
                      "| own head |", "|---|---|---|---|---|---|---|", *rows])


def other_table() -> str:
    """K = 5: the shipped generator and the controls on models no study held out, one report each."""
    rows = []
    for name, label in OTHER:
        r = _read(name)
        if r is None:
            continue
        k, = r["summary"]
        s = r["summary"][k]
        best = max(CONTROLS, key=lambda c: s[c])
        rows.append(f"| {label} | {s['own_head']:.2f} | {s['generated']:.2f} | {s['generator_mean']:.2f} "
                    f"| {s['probe']:.2f} | {s['stitch_ensemble']:.2f} | {best} {s[best]:.2f} |")
    if not rows:
        return "(no reports yet: results/heads/run.sh makes them)"
    return "\n".join(["| target | own head | generated | generator mean | probe | stitch_ensemble | best control |",
                      "|---|---|---|---|---|---|---|", *rows])


TABLES = {"heads8-k5": lambda: k5_table(VARIANTS8), "heads8-ks": lambda: ks_table(VARIANTS8),
          "heads8-curve": lambda: curve_table(CURVE8), "heads-other": other_table, "heads-k5": lambda: k5_table(VARIANTS),
          "heads-ks": lambda: ks_table(VARIANTS), "heads-curve": lambda: curve_table(CURVE)}

if __name__ == "__main__":
    tables.main({name: (PAGE, build) for name, build in TABLES.items()})
