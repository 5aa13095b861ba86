"""Plotly figures from a report dict; no gradio here. Tests read `fig.data`."""
from __future__ import annotations

import plotly.graph_objects as go

from pdiff.measure.sources import colour, of_family, ordered

# what the page shows before anything is ticked: the generated sets, the originals, the average and the strongest
# control at matched novelty (the per-number Gaussian at the generated sets' max-IoU; the plain one where none
# was matched); every other source is one tick away and always in the JSON report
ALWAYS = ("generated", "originals")
PLOTTED = ("generated", "control", "baseline", "defence")  # the families the plots show (the transfer table: all)


def first_view(report: dict) -> list[str]:
    """The sources shown besides ALWAYS before anything is ticked."""
    names = set(report["sources"])
    strongest = "gaussian_matched" if "gaussian_matched" in names else "gaussian"
    return [name for name in ("average", strongest) if name in names]


def more_sources(report: dict) -> list[str]:
    """Every other source of the report but the whole-model controls (baselines, the layer controls, defences), in
    the registry's order."""
    shown = {*ALWAYS, *first_view(report)}
    return [name for name in _plotted(report) if name not in shown]


def focus(report: dict, more=()) -> dict:
    """The report as the plots and the table show it: the first view's sources and those of `more`."""
    keep = {*ALWAYS, *first_view(report), *more}
    t = report.get("tsne", {"x": [], "y": [], "source": [], "acc": []})
    idx = [i for i, name in enumerate(t["source"]) if name in keep]
    return {**report, "sources": {k: v for k, v in report["sources"].items() if k in keep},
            "tsne": {key: [t[key][i] for i in idx] for key in ("x", "y", "source", "acc")}}


def _plotted(report: dict) -> dict[str, dict]:
    """The sources the plots can show, in the registry's order: those of the PLOTTED families but the whole clean
    models as they are (the transfer table's rows)."""
    found = {name: e for name, e in of_family(report["sources"], *PLOTTED).items()
             if not (e["family"] == "control" and e["kind"] == "whole")}
    return {s: found[s] for s in ordered(found)}


def _sources(report: dict) -> dict[str, dict]:
    """The plotted sets of layout vectors, every model of each shown (generated, originals, baselines, the layer
    controls and defences that gave a model) -> their blocks."""
    return {name: e for name, e in _plotted(report).items() if e["kind"] == "layers" and "acc" in e}


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(title=title, xaxis_title=x, yaxis_title=y, template="plotly_white",
                      margin=dict(l=50, r=20, t=50, b=40), legend=dict(orientation="h", y=-0.2))
    return fig


def _distribution(report: dict, key: str, title: str, axis: str) -> go.Figure:
    fig = go.Figure()
    for name, m in _sources(report).items():
        if m.get(key):
            fig.add_trace(go.Box(y=m[key], name=name, boxpoints="all", jitter=0.4, pointpos=0, marker_size=4,
                                 marker_color=colour(name), line_color=colour(name)))
    if key in report["target"]:
        fig.add_hline(y=report["target"][key], line_dash="dash", line_color="black",
                      annotation_text=f"target as-is ({report['target']['name']}): {report['target'][key]:.2f}",
                      annotation_position="top left")
    return _layout(fig, title, "source", axis)


def accuracy_distribution(report: dict) -> go.Figure:
    """Test accuracy of every model by source, with a line at the target's own accuracy."""
    return _distribution(report, "acc", "Accuracy by source", "test accuracy (%)")


def asr_distribution(report: dict) -> go.Figure:
    """Attack success rate by source (backdoored or uploaded targets only)."""
    return _distribution(report, "asr", "Attack success rate by source", "ASR (%)")


def tsne_scatter(report: dict) -> go.Figure:
    """The joint t-SNE of generated, original and baseline vectors, coloured by source, accuracy on hover."""
    t = report["tsne"]
    fig = go.Figure()
    names = list(dict.fromkeys(t["source"]))
    names.sort(key=lambda s: s == "generated")  # generated drawn last, on top of the crowd
    for name in names:
        idx = [i for i, s in enumerate(t["source"]) if s == name]
        fig.add_trace(go.Scatter(x=[t["x"][i] for i in idx], y=[t["y"][i] for i in idx], mode="markers", name=name,
                                 marker=dict(size=6, color=colour(name), opacity=0.75),
                                 customdata=[t["acc"][i] for i in idx],
                                 hovertemplate=name + "<br>acc %{customdata:.2f}%<extra></extra>"))
    return _layout(fig, "t-SNE of parameter vectors", "t-SNE 1", "t-SNE 2")


def accuracy_vs_iou(report: dict) -> go.Figure:
    """The memorisation view: every model's accuracy against its max IoU to the originals, every source,
    with the originals' own nearest-other IoU as the reference: right of it is closer than an original
    is to its nearest neighbour (a copy); up is better."""
    per_model = report["similarity"]["per_model"]
    fig = go.Figure()
    for name, m in _sources(report).items():
        if name in per_model and per_model[name]["max_iou"]:
            fig.add_trace(go.Scatter(x=per_model[name]["max_iou"], y=m["acc"], mode="markers", name=name,
                                     marker=dict(size=7 if name == "generated" else 5, color=colour(name),
                                                 opacity=0.9 if name == "generated" else 0.5),
                                     hovertemplate=f"{name}<br>max IoU %{{x:.3f}}<br>acc %{{y:.2f}}%<extra></extra>"))
    ref = report.get("novelty", {}).get("originals", {}).get("nearest_other_iou_mean")
    if ref is not None:
        fig.add_vline(x=ref, line_dash="dash", line_color="black",
                      annotation_text=f"originals' nearest other: {ref:.3f}", annotation_position="top left")
    return _layout(fig, "Accuracy vs. novelty (max IoU to the originals)", "max IoU to originals", "test accuracy (%)")


def acc_vs_asr(report: dict) -> go.Figure:
    """Every generated model's clean accuracy against its attack success rate, with each other source's mean
    (controls, baselines and defences: diamonds) and the target as-is (a black cross, its own legend entry)
    marked: where a backdoor removal would sit (top left)."""
    g = report["sources"]["generated"]
    fig = go.Figure(go.Scatter(x=g["asr"], y=g["acc"], mode="markers", name="generated",
                               marker=dict(size=6, color=colour("generated"), opacity=0.7),
                               hovertemplate="ASR %{x:.2f}%<br>ACC %{y:.2f}%<extra></extra>"))
    for name, m in _plotted(report).items():
        if name != "generated" and m.get("asr"):
            fig.add_trace(go.Scatter(x=[sum(m["asr"]) / len(m["asr"])], y=[sum(m["acc"]) / len(m["acc"])],
                                     mode="markers", name=f"{name} (mean)",
                                     marker=dict(size=12, symbol="diamond", color=colour(name))))
    t = report["target"]
    fig.add_trace(go.Scatter(x=[t["asr"]], y=[t["acc"]], mode="markers", name=f"target as-is ({t['name']})",
                             marker=dict(size=14, symbol="x", color="black")))
    return _layout(fig, "Clean accuracy vs. attack success", "ASR (%)", "test accuracy (%)")


def summary_rows(report: dict) -> list[list]:
    """Rows of the accuracy table: source, n, accuracy (best, mean, median, min, std), then spread and
    novelty (IoU within the source, mean max-IoU to the originals, coverage)."""
    def r(value, digits):
        return round(value, digits) if value is not None else None

    rows = []
    for name, m in _sources(report).items():
        s, nov = m["summary"]["acc"], report.get("novelty", {}).get(name, {})
        rows.append([name, len(m["acc"]), *(r(s[k], 2) for k in ("best", "mean", "median", "min")), r(s.get("std"), 3),
                     *(r(nov.get(k), 3) for k in ("self_iou", "max_iou_mean", "coverage"))])
    return rows


def summary_headers(report: dict) -> list[str]:
    return ["source", "n", "ACC best", "ACC mean", "ACC median", "ACC min", "ACC std", "IoU within",
            "max-IoU to originals", "coverage"]


def waiting(title: str, what: str) -> go.Figure:
    """An empty plot that says what is still being computed (a run's later stages)."""
    fig = go.Figure()
    fig.add_annotation(text=f"{what}…", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper",
                       font=dict(size=16, color="grey"))
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return _layout(fig, title, "", "")
