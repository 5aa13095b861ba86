"""The tables of docs/conditions.md from the reports run.sh writes.

python results/conditions/table.py [conditions-bar|conditions-acc|conditions-sweep|conditions-trunks|conditions-victim|conditions-speed] [--write]
conditions-bar reads the shipped default bundle itself (its originals' test accuracies and the validation accuracies
they were conditioned on); the others read the reports run.sh writes.
"""
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path[:0] = [str(HERE.parent), str(HERE.parent.parent)]  # results/ (tables) and the checkout (pdiff)
import tables  # noqa: E402
from tables import curve_at  # noqa: E402

from pdiff.studies.formats import read  # noqa: E402

PAGE = tables.DOCS / "conditions.md"
BUNDLE = HERE.parent.parent / "checkpoints" / "fmnist-convnet" / "bundle"
SEEDS = (0, 1, 2)
FRACTIONS = ("top10", "top25", "top50")


def _missing(what: str) -> str:
    return f"(no {what} yet: results/conditions/run.sh makes it)"


def _top_curve(nov: dict, q: str) -> list:
    """The top-q Gaussian's accuracy-novelty curve [(max-IoU, acc)], its temperature-0 point (the mean of the top q)
    included."""
    return [(v["max_iou_mean"], v["acc_mean"]) for k, v in nov.items() if k.startswith(f"gaussian_{q}_t")]


def bar_table() -> str:
    """The bar an `acc=best` ask must clear, from the shipped bundle: the originals' top q chosen on their validation
    accuracy (what a user without the test split can choose), reported on test; beside it the top 10 % chosen on
    test accuracy, an oracle."""
    from safetensors.torch import load_file

    test = json.loads((BUNDLE / "bundle.json").read_text())["originals_acc"]
    val = load_file(BUNDLE / "conditions.safetensors")["values"].flatten().tolist()
    by_val = sorted(range(len(val)), key=lambda i: -val[i])
    by_test = sorted(range(len(test)), key=lambda i: -test[i])

    def line(name, chosen, order, q):
        n = max(1, round(q * len(order)))
        top = order[:n]
        return (f"| {name} | {chosen} | {n} | {sum(val[i] for i in top) / n:.2f} | "
                f"{sum(test[i] for i in top) / n:.2f} |")

    return "\n".join(["| originals | chosen on | n | validation acc mean | test acc mean |", "|---|---|---|---|---|",
                      line("all", "-", by_val, 1.0),
                      *(line(f"top {round(q * 100)} %", "validation", by_val, q) for q in (0.1, 0.25, 0.5)),
                      line("top 10 %", "test (an oracle)", by_test, 0.1)])


def acc_table() -> str:
    """acc=best, seed by seed: the generated mean beside the originals' top q (chosen on validation; and the top 10 %
    by test accuracy, an oracle no user has), the max-IoU bound and the top-q Gaussians at the generated max-IoU."""
    reports = {s: read(HERE / f"acc-best-seed{s}.json") for s in SEEDS if (HERE / f"acc-best-seed{s}.json").exists()}
    if not reports:
        return _missing("accuracy-conditional reports")
    lines = ["| run | acc mean | max-IoU | bound: nearest other + 0.03 | originals top 10 % (validation) | "
             "top 10 % by test (an oracle) | Gaussian top 10 % at that max-IoU | top 25 % | top 50 % | all originals' Gaussian |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    runs = {f"acc=best, guidance {r['condition']['guidance']:g}, seed {s}": r for s, r in reports.items()}
    none = HERE / "acc-none-seed0.json"
    if none.exists():
        runs["none (same bundle), seed 0"] = read(none)
    for name, r in runs.items():
        nov, g = r["novelty"], r["novelty"]["generated"]
        tops = (r.get("condition") or {}).get("originals_top_by_validation", {})
        test = sorted(r["sources"]["originals"]["acc"], reverse=True)
        strict = sum(test[:len(test) // 10]) / (len(test) // 10)
        curves = [curve_at(_top_curve(nov, q), g["max_iou_mean"]) for q in FRACTIONS]
        plain = [(v["max_iou_mean"], v["acc_mean"]) for k, v in nov.items() if re.fullmatch(r"gaussian_t[\d.]+", k)]
        cells = [g["acc_mean"], g["max_iou_mean"], nov["originals"]["nearest_other_iou_mean"] + 0.03,
                 tops.get("top10"), strict, *curves, curve_at(plain, g["max_iou_mean"]) if plain else None]
        fmt = [".2f", ".3f", ".3f", ".2f", ".2f", ".2f", ".2f", ".2f", ".2f"]
        lines.append(f"| {name} | " + " | ".join("-" if c is None else f"{c:{f}}" for c, f in zip(cells, fmt)) + " |")
    return "\n".join(lines)


def sweep_table() -> str:
    """One table per guidance scale swept (acc-sweep-wG.json; acc-sweep.json at the bundle's own scale)."""
    paths = sorted(HERE.glob("acc-sweep*.json"))
    if not paths:
        return _missing("sweep")
    out = []
    for path in paths:
        s = json.loads(path.read_text())
        out += [f"Guidance {s['guidance']:g}: {s['n_per_value']} sets per asked value ({s['sampler']}, seed {s['seed']}); "
                f"validation {s['validation_size']} images. Spearman's rho, asked against measured validation "
                f"accuracy: **{s['spearman_per_set']:.3f}** over every set, **{s['spearman_of_means']:.3f}** over "
                "the means."
                + (f" Against the measured test accuracy: {s['spearman_test_per_set']:.3f} and "
                   f"{s['spearman_test_of_means']:.3f}." if "spearman_test_per_set" in s else "")
                + (f" The originals' own validation accuracy ranks their test accuracy at rho "
                   f"**{s['originals_spearman_validation_test']:.3f}**." if "originals_spearman_validation_test" in s
                   else ""), "",
                "| asked | validation acc mean | test acc mean | test acc min |", "|---|---|---|---|"]
        for asked, m in s["measured"].items():
            val, test = m["validation"], m["test"]
            out.append(f"| {asked} | {sum(val) / len(val):.2f} | {sum(test) / len(test):.2f} | {min(test):.2f} |")
        out.append("")
    return "\n".join(out).strip()


def trunks_table() -> str:
    path = HERE / "trunks.json"
    if not path.exists():
        return _missing("trunk study")
    r = read(path)
    held, sampling = r["held_out_trunks"], r["settings"]["sampling"]
    lines = [f"Held-out trunks {held}; each trunk's signature from {r['probe_images']} clean training images "
             f"(20 per class); guidance {r['guidance']}; N = {sampling['n']} ({sampling['sampler']}).", "",
             "| source | " + " | ".join(f"trunk {h}" for h in held) + " | mean |",
             "|---|" + "---|" * (len(held) + 1)]
    for name, s in r["summary_over_trunks"].items():
        cells = " | ".join(f"{r['trunks'][str(h)]['sources'][name]['mean']:.2f}" for h in held)
        lines.append(f"| {name} | {cells} | {s['mean']:.2f} |")
    return "\n".join(lines)


def victim_table() -> str:
    path = HERE / "trunk-victim.json"
    if not path.exists():
        return _missing("scratch-victim transfer")
    r = read(path)
    v = r["victim"]
    lines = [f"Victim {v['name']}: ACC {v['acc']:.2f}, ASR {v['asr']:.2f}. N = {r['settings']['sampling']['n']}, "
             f"seeds {r['seeds']}, "
             f"condition {r['settings']['sampling'].get('condition')}.", "",
             "| method | clean images | condition images | model images | checkpoints | ACC | ASR | DER |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in r["sources"].items():
        res, s = m["clean_resources"], m["summary"]
        lines.append(f"| {name} | {res['images']} | {res.get('condition_images', 0)} | {res['model_images'] or '-'} | "
                     f"{res['checkpoints']} | {s['acc']['mean']:.2f} | {s['asr']['mean']:.2f} | {s['der']['mean']:.3f} |")
    return "\n".join(lines)


def speed_table() -> str:
    path = HERE / "sample-bench.json"
    if not path.exists():
        return _missing("sampling bench")
    b = json.loads(path.read_text())
    t = [k for k in b if k.startswith("guided_ddpm")][0]
    plain = t.replace("guided_", "")
    return "\n".join([
        *([f"({b['note']}.)", ""] if b.get("note") else []),
        "| what | seconds | ratio |", "|---|---|---|",
        f"| {b['n']} sets, {plain.removesuffix('_s')}, unconditional | {b[plain]:.2f} | 1 |",
        f"| the same, guided ({b['condition']}, scale {b['guidance']:g}) | {b[t]:.2f} | {b['guided_over_unconditional']:.2f} |",
        f"| one trunk signature ({b['signature_probe_images']} images) | {b['signature_s']:.3f} | |"])


TABLES = {"conditions-bar": bar_table, "conditions-acc": acc_table, "conditions-sweep": sweep_table, "conditions-trunks": trunks_table,
          "conditions-victim": victim_table, "conditions-speed": speed_table}

if __name__ == "__main__":
    tables.main({name: (PAGE, build) for name, build in TABLES.items()})
