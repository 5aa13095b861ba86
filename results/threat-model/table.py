"""The tables of docs/threat-model.md from the reports run.sh writes: one row per method and trigger.

python results/threat-model/table.py [threat-badnets|threat-blended|threat-goals] [--write]
The design gives each trigger three scratch victims (seeds 1, 2, 3) and three generator seeds g (the donor's bundle
trained with seed g, sampling and the defences' training with seed g); a table uses the runs that exist and says
which. A cell is the mean over the runs;
"± victims" is the std over the victims of their means over g, "± seeds" the std over g of the means over victims.
"""
import sys
from pathlib import Path
from statistics import mean, stdev

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent.parent)]  # results/ (tables) and the checkout (pdiff)
import tables  # noqa: E402

from pdiff.studies.formats import read  # noqa: E402

PAGE = tables.DOCS / "threat-model.md"
VICTIMS, SEEDS = ("s1", "s2", "s3"), (0, 1, 2)


def runs(trigger: str) -> dict:
    """(victim, g) -> report, for the runs that exist."""
    out = {}
    for v in VICTIMS:
        for g in SEEDS:
            path = HERE / f"{trigger}-{v}-g{g}.json"
            if path.exists():
                out[(v, g)] = read(path)
    return out


def _mean(values):
    return mean(values) if values else None


def method_cells(reports: dict, name: str, key: str, revived: bool = False) -> tuple:
    """(mean over all runs, std over victims, std over seeds) of a method's per-run mean of `key`."""
    per = {}
    for (v, g), r in reports.items():
        m = r["methods"].get(name)
        values = ((m or {}).get("revived") or {}).get(key) if revived else (m or {}).get(key)
        if values:
            per[(v, g)] = mean(values)
    if not per:
        return None, None, None
    by_v = [mean(x for (v, _), x in per.items() if v == victim) for victim in VICTIMS if any(k[0] == victim for k in per)]
    by_g = [mean(x for (_, g), x in per.items() if g == seed) for seed in SEEDS if any(k[1] == seed for k in per)]
    return mean(per.values()), stdev(by_v) if len(by_v) > 1 else None, stdev(by_g) if len(by_g) > 1 else None


def _fmt(cell, digits):
    value, sv, sg = cell
    if value is None:
        return "-"
    spread = " / ".join(f"{s:.{digits}f}" if s is not None else "-" for s in (sv, sg))
    return f"{value:.{digits}f} (± {spread})"


def _which(reports: dict) -> str:
    victims = sorted({v for v, _ in reports})
    seeds = sorted({g for _, g in reports})
    return (f"{len(reports)} of the design's {len(VICTIMS) * len(SEEDS)} (victims {', '.join(victims)}; generator "
            f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))})")


def trigger_table(trigger: str) -> str:
    reports = runs(trigger)
    if not reports:
        return f"(no {trigger} runs yet: results/threat-model/run.sh makes them)"
    first = next(iter(reports.values()))
    victims = {v: r["victim"] for (v, g), r in reports.items()}
    lines = ["Victims as they are: " + "; ".join(f"{v} ACC {x['acc']:.2f} / ASR {x['asr']:.2f}"
                                                   for v, x in sorted(victims.items())) + f". Runs: {_which(reports)}.",
             "",
             "| method | clean images | model images | checkpoints | ACC | ASR | DER | ASR after revival |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in first["methods"].items():
        res = m.get("clean_resources", {})
        ledger = [res.get("images"), res.get("model_images"), res.get("checkpoints")]
        cells = [_fmt(method_cells(reports, name, k), d) for k, d in (("acc", 2), ("asr", 2), ("der", 3))]
        cells.append(_fmt(method_cells(reports, name, "asr", revived=True), 2))
        lines.append(f"| {name} | " + " | ".join("-" if c is None else str(c) for c in ledger) + " | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


GENERATED = ("generated", "stitch+generated")


def goals() -> str:
    """The goal, trigger by trigger: a method with generated layers at DER >= 0.95, ACC within 1.5 points of the
    victim and at least the donor's ACC + 3; its DER at least fp's and anp's; its revived ASR below theirs."""
    lines = ["| trigger | method | DER | ACC drop | over the donor's ACC | DER >= fp, anp | revived ASR < fp's, anp's |"
             " goal met |", "|---|---|---|---|---|---|---|---|"]
    for trigger in ("badnets", "blended"):
        reports = runs(trigger)
        if not reports:
            continue
        victim_acc = mean(r["victim"]["acc"] for r in reports.values())
        donor = method_cells(reports, "donor", "acc")[0]
        der = {n: method_cells(reports, n, "der")[0] for n in (*GENERATED, "fp", "anp")}
        rev = {n: method_cells(reports, n, "asr", revived=True)[0] for n in (*GENERATED, "fp", "anp")}
        for name in GENERATED:
            acc = method_cells(reports, name, "acc")[0]
            if acc is None:
                continue
            checks = [der[name] >= 0.95, victim_acc - acc <= 1.5, donor is not None and acc >= donor + 3,
                      all(der[name] >= (der[d] or 0) for d in ("fp", "anp")),
                      all(rev[name] < (rev[d] if rev[d] is not None else float("inf")) for d in ("fp", "anp"))]
            lines.append(f"| {trigger} | {name} | {der[name]:.3f} | {victim_acc - acc:.2f} | "
                         f"{acc - donor:+.2f} | {'yes' if checks[3] else 'no'} | {'yes' if checks[4] else 'no'} | "
                         f"{'yes' if all(checks) else 'no'} |")
    return "\n".join(lines)


TABLES = {"threat-badnets": lambda: trigger_table("badnets"), "threat-blended": lambda: trigger_table("blended"),
          "threat-goals": goals}

if __name__ == "__main__":
    tables.main({name: (PAGE, build) for name, build in TABLES.items()})
