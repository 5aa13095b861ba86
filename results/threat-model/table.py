"""The tables of docs/threat-model.md from the reports run.sh writes: one row per method and trigger.

python results/threat-model/table.py [threat-badnets|threat-blended|threat-goals] [--write]
The design gives each trigger three scratch victims (seeds 1, 2, 3) and three generator seeds g (the donor's bundle
trained with seed g, sampling and the defences' training with seed g); a table uses the runs of this design that exist
(reports with the fst defence; earlier ones are left out) and says which. Every victim weighs the same: a cell is
the mean over victims of each victim's mean over its generator seeds; "± victims" is the std of those victim means,
"± seeds" the mean over victims of the std over a victim's generator seeds ("-" where no victim has two).
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
                report = read(path)
                if "fst" in report["sources"]:  # this design's runs only
                    out[(v, g)] = report
    return out


def _mean(values):
    return mean(values) if values else None


def balanced(per: dict) -> tuple:
    """{(victim, g): value} -> (mean over victims of their means over g, std of the victim means, mean over victims of
    the std over their seeds)."""
    if not per:
        return None, None, None
    by_v = {victim: [x for (v, _), x in per.items() if v == victim] for victim in VICTIMS}
    by_v = {v: xs for v, xs in by_v.items() if xs}
    means = [mean(xs) for xs in by_v.values()]
    seed_stds = [stdev(xs) for xs in by_v.values() if len(xs) > 1]
    return mean(means), stdev(means) if len(means) > 1 else None, mean(seed_stds) if seed_stds else None


def method_cells(reports: dict, name: str, key: str, revived: bool = False) -> tuple:
    """balanced() of a method's per-run mean of `key` (after the revival attack, with `revived`)."""
    per = {}
    for (v, g), r in reports.items():
        m = r["sources"].get(name)
        values = ((m or {}).get("revived") or {}).get(key) if revived else (m or {}).get(key)
        if values:
            per[(v, g)] = mean(values)
    return balanced(per)


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
    calib = {k: r["revival"].get("calibration", [{}])[0] for k, r in reports.items()}
    steps = sorted({c.get("steps") for c in calib.values()})
    floor = balanced({k: c["floor_asr"] for k, c in calib.items() if "floor_asr" in c})
    lines = ["Victims as they are: " + "; ".join(f"{v} ACC {x['acc']:.2f} / ASR {x['asr']:.2f}"
                                                   for v, x in sorted(victims.items())) + f". Runs: {_which(reports)}. "
             f"Revival: {', '.join(map(str, steps))} poisoned steps (calibrated on the validation split per run); the "
             f"budget donor's ASR under it, the floor: {_fmt(floor, 2)}.",
             "",
             "| method | clean images | model images | checkpoints | ACC | ASR | DER | revived ACC | revived ASR | "
             "revived ASR over the floor |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, m in first["sources"].items():
        res = m.get("clean_resources", {})
        ledger = [res.get("images"), res.get("model_images"), res.get("checkpoints")]
        cells = [_fmt(method_cells(reports, name, k), d) for k, d in (("acc", 2), ("asr", 2), ("der", 3))]
        cells += [_fmt(method_cells(reports, name, k, revived=True), 2) for k in ("acc", "asr", "asr_excess")]
        lines.append(f"| {name} | " + " | ".join("-" if c is None else str(c) for c in ledger) + " | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


GENERATED = ("generated", "stitch+generated")
RIVALS = ("fp", "fst", "anp")  # the defences a method with generated layers must match


def goals() -> str:
    """The goal, trigger by trigger: a method with generated layers at DER >= 0.95, ACC within 1.5 points of the
    victim and at least the donor's ACC + 3; its DER at least fp's, fst's and anp's; its revived ASR below theirs."""
    lines = ["| trigger | method | DER | ACC drop | over the donor's ACC | DER >= fp, fst, anp | revived ASR < fp's, "
             "fst's, anp's |"
             " goal met |", "|---|---|---|---|---|---|---|---|"]
    for trigger in ("badnets", "blended"):
        reports = runs(trigger)
        if not reports:
            continue
        victim_acc = balanced({k: r["victim"]["acc"] for k, r in reports.items()})[0]
        donor = method_cells(reports, "donor", "acc")[0]
        der = {n: method_cells(reports, n, "der")[0] for n in (*GENERATED, *RIVALS)}
        rev = {n: method_cells(reports, n, "asr", revived=True)[0] for n in (*GENERATED, *RIVALS)}
        for name in GENERATED:
            acc = method_cells(reports, name, "acc")[0]
            if acc is None:
                continue
            checks = [der[name] >= 0.95, victim_acc - acc <= 1.5, donor is not None and acc >= donor + 3,
                      all(der[name] >= (der[d] or 0) for d in RIVALS),
                      all(rev[name] < (rev[d] if rev[d] is not None else float("inf")) for d in RIVALS)]
            lines.append(f"| {trigger} | {name} | {der[name]:.3f} | {victim_acc - acc:.2f} | "
                         f"{acc - donor:+.2f} | {'yes' if checks[3] else 'no'} | {'yes' if checks[4] else 'no'} | "
                         f"{'yes' if all(checks) else 'no'} |")
    return "\n".join(lines)


TABLES = {"threat-badnets": lambda: trigger_table("badnets"), "threat-blended": lambda: trigger_table("blended"),
          "threat-goals": goals}

if __name__ == "__main__":
    tables.main({name: (PAGE, build) for name, build in TABLES.items()})
