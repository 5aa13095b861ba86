"""build_demo() -> gr.Blocks: layout and wiring; handlers at module level only format."""
from __future__ import annotations

import os
import sys
import tempfile
import threading
from functools import lru_cache
from pathlib import Path

import gradio as gr

from pdiff.app import plots
from pdiff.app import texts as text
from pdiff.app.allowlist import allowed_roots
from pdiff.app.examples import EXAMPLE_TARGETS, EXAMPLES, load_example
from pdiff.app.heads import heads_panel
from pdiff.app.request import FORM, LIGHT, MAX_N, RunRequest, condition_choices, target_choices
from pdiff.core.runtime import resolve_device
from pdiff.core.settings import SAMPLERS, DataSpec
from pdiff.core.splice import ALL_LAYERS
from pdiff.data.datasets import DataError, Split
from pdiff.data.plan import RunData
from pdiff.data.triggers import CORNERS, trigger_line
from pdiff.generator import locate
from pdiff.generator.bundle import Bundle, BundleError
from pdiff.generator.locate import shipped_bundles
from pdiff.generator.sampling import Samples
from pdiff.measure.engine import EngineCache
from pdiff.models.loading import TargetError
from pdiff.studies.report import report_stages
from pdiff.studies.report import warm as warm_engines
from pdiff.studies.transfer import TABLE_HEADERS, table_rows

# per (bundle, target, layers): trunk features, triggered test set and the results of every set that does not
# depend on the run's seed, kept between runs and (measure.store) on disk
ENGINES = EngineCache(size=4, stored=True)
MAX_UPLOAD = "200mb"
MAX_QUEUE = 64  # runs waiting at once before new ones are refused

try:  # on a ZeroGPU Space, `spaces.GPU` borrows a GPU for the duration of one call
    import spaces

    _gpu = spaces.GPU
except ImportError:
    def _gpu(fn):
        return fn


@lru_cache(maxsize=4)
def load_bundle(source: str) -> Bundle:
    """A bundle by the names the CLI takes, local folders only under the allowed roots (app.allowlist); cached."""
    return locate.load_bundle(source, roots=allowed_roots())


@lru_cache(maxsize=2)
def _test_split(dataset: str) -> Split:
    return Split.load(dataset, "test")


@lru_cache(maxsize=2)
def _train_split(dataset: str) -> Split:
    """The training split, which only the defence baselines need (a Space may not have it)."""
    try:
        return Split.load(dataset, "train")
    except DataError as e:
        raise DataError(f"the defence baselines train on the {dataset} training split, which is not available "
                        f"here ({e}); untick them") from None


_DATA_LOCK = threading.Lock()


def _run_data(dataset: str) -> RunData:
    """The test split and, where available, the training split (validation, BatchNorm images, the defences'
    budget), loaded once per dataset; a Space may have no training split. One load at a time: the launch's warm-up
    and a first request share it (and so share the engines, which are keyed by the splits they hold)."""
    with _DATA_LOCK:
        return _load_run_data(dataset)


@lru_cache(maxsize=2)
def _load_run_data(dataset: str) -> RunData:
    try:
        train = Split.load(dataset, "train")
    except DataError:
        train = None
    data = RunData(_test_split(dataset), train, DataSpec())
    _ = data.validation, data.bn  # derived here, once: engines are keyed by the splits they hold
    return data


@_gpu
def _stages(request: RunRequest, progress):
    """The GPU part: sample, splice, evaluate, as studies.report.report_stages yields it (plain data; figures are
    built outside)."""
    data = _run_data(request.bundle.task.dataset)
    if request.settings.defences and request.target.trigger is not None and data.train is None:
        _train_split(request.bundle.task.dataset)  # raises: the defences need the training split
    yield from report_stages(request.bundle, request.target, data, request.sampling, request.settings, ENGINES,
                             progress=lambda frac, desc: progress(frac, desc=desc), device=resolve_device("auto"))


def warm_default(bundle_name: str) -> None:
    """Load the default run's bundle and data and build its engines (studies.report.warm) before the first click:
    a thread at launch. A failure here only costs the first run its head start, so it is logged, not raised."""
    try:
        bundle = load_bundle(bundle_name)
        request = RunRequest.from_form({"bundle": bundle_name}, bundle)
        warm_engines(bundle, request.target, _run_data(bundle.task.dataset), request.sampling, request.settings, ENGINES,
                     resolve_device("auto"))
    except Exception as e:  # noqa: BLE001
        print(f"pdiff: could not prepare the default run ahead ({type(e).__name__}: {e})", file=sys.stderr)


def generate(victim_file: str | None = None, more: list[str] | None = None, progress=gr.Progress(), **form):
    """Run: sample parameter sets, splice into the target, evaluate; show the results as they come (the generated
    models and the originals first, then every baseline, control and defence, then the t-SNE), then the report and
    parameter files.

    The form's fields (request.FORM; an API client passes only those it changes): bundle; target (clean, victim, one
    of the bundle's named victims such as finetuned-blended, or upload with `victim_file`); trigger_*, patch_*,
    blend_*: the uploaded model's trigger (data.triggers.trigger_from_fields; 'assumed' scores it against the
    bundle's BadNets trigger and says so in the report; named victims use their own); layers; n, sampler, steps,
    seed; defences (fine-tune, re-init, FT, FP, FST, ANP, CLP on a 5 % clean budget: needs the training split);
    condition (default, none, acc=best, acc with the `acc` value, trunk=target) and guidance, for a conditional
    bundle. `more`: the sources ticked under "More sources", which the plots and the table show beside the first
    view's (plots.first_view; the page's state, not an API parameter: the JSON report holds every source). An API
    client receives every stage; the last is the finished run.
    """
    from pdiff.core.files import write_json

    try:
        bundle = load_bundle(form.get("bundle", ""))
        request = RunRequest.from_form({**form, "victim_file": victim_file}, bundle)
        for report, vectors in _stages(request, progress):
            if report.get("pending"):
                yield views(report, more=more or ())
    except (ValueError, BundleError, TargetError, DataError, OSError) as e:
        raise gr.Error(str(e)) from None
    except Exception as e:  # never a stack trace in the page; the app keeps serving
        raise gr.Error(f"{type(e).__name__}: {e}") from None
    out = _run_folder()
    report_path = out / "report.json"
    write_json(report_path, report)
    params_path = Samples(vectors, request.sampling, bundle).save(out / "generated.safetensors")
    yield views(report, (str(report_path), str(params_path)), more=more or ())


def views(report: dict, files: tuple[str | None, str | None] = (None, None), example: dict | None = None,
          more=()) -> list:
    """Every output of the page for a report (finished, a stage of one, or a shipped example), in OUTPUT_ORDER: the
    plots and the table show the first view's sources and those of `more` (plots.focus); the transfer table all."""
    backdoor = report["backdoor"] == "applicable"
    rows = table_rows(report["target"], report["sources"]) if backdoor else []  # every source, by family's order
    transfer = {"headers": TABLE_HEADERS, "data": rows}
    shown = _shown(report, more)
    choices = plots.more_sources(report)
    ticked = [m for m in more if m in choices]
    return [*files, *shown[:5], _status(report, example), shown[5], transfer, gr.update(choices=choices, value=ticked),
            report, ticked]


def _shown(report: dict, more=()) -> list:
    """The views that follow the sources chosen (VIEWS' order): the table and the plots of plots.focus(report)."""
    view, backdoor = plots.focus(report, more), report["backdoor"] == "applicable"
    tsne = (plots.waiting("t-SNE", "computing the t-SNE") if "t-SNE" in report.get("pending", [])
            else plots.tsne_scatter(view))
    return [{"headers": plots.summary_headers(view), "data": plots.summary_rows(view)},
            plots.accuracy_distribution(view), plots.asr_distribution(view) if backdoor else None, tsne,
            plots.accuracy_vs_iou(view), plots.acc_vs_asr(view) if backdoor else None]


def show_more(report: dict | None, more: list[str]) -> list:
    """The table and the plots again, for the sources ticked under "More sources" (no run, no queue), and the ticks
    kept for the next run."""
    if not report:
        return [gr.update()] * len(VIEWS) + [more]
    return [*_shown(report, more), more]


KEEP_RUNS_S = 3600


def runs_folder() -> Path:
    """Where runs write their downloads: inside gradio's cache, which gradio serves from without copying,
    and whose files delete_cache removes (KEEP_RUNS_S after they were written, and all at shutdown)."""
    from gradio.utils import get_upload_folder

    return Path(get_upload_folder()) / "pdiff-runs"


def _run_folder() -> Path:
    """A fresh folder for one run's downloads; old folders that delete_cache has emptied are removed."""
    import time

    runs = runs_folder()
    runs.mkdir(parents=True, exist_ok=True)
    for old in runs.iterdir():
        if time.time() - old.stat().st_mtime > KEEP_RUNS_S:
            try:
                old.rmdir()  # only if empty: its files are gradio's to delete
            except OSError:
                pass
    return Path(tempfile.mkdtemp(dir=runs))


def _status(report: dict, example: dict | None = None) -> str:
    generated, t = report["sources"]["generated"], report["target"]
    s, o = generated["summary"]["acc"], report["sources"]["originals"]["summary"]["acc"]
    if s["mean"] is None:
        return (f"All {report['settings']['sampling']['n']} generated parameter sets had non-finite values; nothing "
                "to evaluate.")
    line = (f"**{len(generated['acc'])} generated models** on `{t['name']}`: "
            f"accuracy best {s['best']:.2f} / mean {s['mean']:.2f} / median {s['median']:.2f} / min {s['min']:.2f} "
            f"(originals best {o['best']:.2f} / mean {o['mean']:.2f}; target as-is {t['acc']:.2f}). "
            f"Sampling {report['timings_s']['sample']:.1f} s, evaluation {report['timings_s']['evaluate']:.1f} s "
            f"on {report['device']}.")
    if generated["nonfinite"]:
        line += f" {generated['nonfinite']} sets had non-finite values and were left out."
    if report["backdoor"] != "applicable":
        line += f" Backdoor metrics {report['backdoor']}."
    condition = report.get("condition")
    if condition:  # a scale only where a condition guided the sets
        guidance = "" if condition["guidance"] is None else f" (guidance {condition['guidance']:g})"
        line += f" Asked for {condition['asked']}{guidance}."
    described = trigger_line(t)
    line += f" The {described}." if described else ""
    if report.get("pending"):
        line += f" *Still coming: {' and '.join(report['pending'])}.*"
    if example:
        made = example["example"]
        line = (f"**Example run** (made on {made['made_on']} with the app's defaults, shipped with the app): press "
                f"**Run** for a run of your own.\n\n{line}")
    return line


def bundle_changed(bundle: str):
    """When the bundle changes: its layers become the choices, all selected; its victims become targets; its
    conditions the condition choices (the group hidden for an unconditional bundle), the accuracy slider its range."""
    try:
        b = load_bundle(bundle)
    except (ValueError, BundleError, OSError) as e:
        raise gr.Error(str(e)) from None
    return (gr.update(choices=[ALL_LAYERS, *b.names], value=[ALL_LAYERS]),
            gr.update(choices=target_choices(b), value="clean"), *_condition_updates(b))


def _condition_updates(b: Bundle) -> tuple:
    """The condition group's visibility, the condition choices, and the accuracy slider's range (an acc bundle)."""
    low, high = _acc_range(b)
    return (gr.update(visible=b.conditions is not None), gr.update(choices=condition_choices(b), value="default"),
            gr.update(minimum=low, maximum=high, value=high, visible=False))


def _acc_range(b: Bundle | None) -> tuple[float, float]:
    """The validation accuracies an accuracy-conditional bundle saw, rounded for the slider (else 0 to 100)."""
    c = b.conditions if b is not None else None
    low, high = c.acc_range if c is not None and c.kind == "acc" else (0.0, 100.0)
    return round(low, 2), round(high, 2)


def _inputs(shipped: dict, default_bundle: str) -> tuple[dict, gr.Group, gr.Group]:
    """The left column: bundle, target, upload and its trigger, layers, sampling settings, the defence box, the
    condition (the API's parameters, request.FORM's order and defaults); the group of trigger fields, shown for an
    upload, and the group of condition fields, shown for a conditional bundle."""
    b = load_bundle(default_bundle) if default_bundle else None
    default_layers = [ALL_LAYERS, *(b.names if b else [])]
    targets = target_choices(b) if b else ["clean", "upload"]
    inp = dict(
        bundle=gr.Dropdown(choices=list(shipped), value=default_bundle, allow_custom_value=True, label="Bundle",
                           info="a shipped bundle, a Hub repo id (owner/name), or a folder under the server's "
                                "allowed bundle roots"),
        target=gr.Radio(targets, value=FORM["target"], label="Target model",
                        info="victim: trained from scratch on poisoned data; finetuned-*: the clean base fine-tuned "
                             "on poisoned data (BadNets patch or blended pattern)"),
        victim_file=gr.File(label="Uploaded model (.pth / .pt / .safetensors)",
                            file_types=[".pth", ".pt", ".safetensors"], type="filepath"))
    with gr.Group(visible=False) as trigger_box:
        inp.update(_trigger_inputs())
    inp.update(
        # a dropdown that accepts custom values: an API client may name the layers of another bundle
        layers=gr.Dropdown(choices=default_layers, value=[ALL_LAYERS], multiselect=True, allow_custom_value=True,
                           label="Layers to splice",
                           info="all, or a subset of the bundle's train_layer; the target keeps its own values "
                                "for the rest"),
        n=gr.Slider(1, MAX_N, value=FORM["n"], step=1, label="N (parameter sets to generate)"),
        sampler=gr.Radio(list(SAMPLERS), value=FORM["sampler"], label="Sampler",
                         info="DDPM runs all 1000 steps; DDIM is the fast option (the app's default; the CLI's is "
                              "DDPM)"),
        steps=gr.Slider(1, 1000, value=FORM["steps"], step=1, label="DDIM steps"),
        seed=gr.Number(value=FORM["seed"], precision=0, label="Seed"),
        defences=gr.Checkbox(FORM["defences"], label="Defences (fine-tune, re-init, FT, FP, FST, ANP, CLP)",
                             info="for a backdoored target, on 5% of the training images: the target's own layers "
                                  "fine-tuned or re-initialised, the whole target fine-tuned (FT), fine-pruning (FP), "
                                  "feature shift tuning (FST), adversarial neuron pruning (ANP) and the data-free CLP; needs the training split, "
                                  "adds a few minutes on a CPU"),
    )
    low, high = _acc_range(b)
    with gr.Group(visible=b is not None and b.conditions is not None) as condition_box:
        inp.update(
            condition=gr.Radio(condition_choices(b) if b else ["default"],
                               value=FORM["condition"], label="Condition",
                               info="what a conditional bundle is asked for. default: what it is for (the best "
                                    "accuracy it saw; or the target's own trunk); none: its unconditional model; "
                                    "acc: the accuracy on the slider (validation accuracy, percent)"),
            acc=gr.Slider(low, high, value=high, step=0.01,
                          label="Asked validation accuracy (%)", visible=False),
            # a text box: blank (the bundle's own scale) is a value an API client can leave as it is
            guidance=gr.Textbox(value=FORM["guidance"], label="Guidance scale", placeholder="the bundle's own",
                                info="classifier-free guidance; blank: the scale the bundle chose on its validation "
                                     "split; 0: the unconditional model"))
    return inp, trigger_box, condition_box


def _trigger_inputs() -> dict:
    """The uploaded model's trigger, beside the upload (backdoor.trigger_from_fields builds it)."""
    return dict(
        trigger_kind=gr.Radio(["assumed", "patch", "blend", "none"], value=FORM["trigger_kind"],
                              label="Trigger of the upload",
                              info="assumed: the bundle's BadNets trigger (3x3 white square, bottom-right, class 0), "
                                   "named as assumed in the report; patch: a white square; blend: a noise pattern "
                                   "mixed in; none: no backdoor metrics"),
        trigger_target=gr.Number(value=FORM["trigger_target"], precision=0, label="Target class"),
        patch_size=gr.Number(value=FORM["patch_size"], precision=0, label="Patch size (pixels)"),
        patch_corner=gr.Dropdown(list(CORNERS), value=FORM["patch_corner"], label="Patch corner"),
        blend_opacity=gr.Slider(0, 1, value=FORM["blend_opacity"], step=0.01, label="Blend opacity"),
        blend_seed=gr.Number(value=FORM["blend_seed"], precision=0, label="Blend pattern seed"),
    )


def _outputs(first: list | None) -> dict:
    """The right column, in the order `generate` returns its values; `first`: the values it opens on (an example
    run's views), or None."""
    first = dict(zip(OUTPUT_ORDER, first)) if first else {}
    empty = {"headers": plots.summary_headers({}), "data": []}
    out = {"status": gr.Markdown(first.get("status", "Press **Run** to sample and evaluate."), elem_id="status"),
           "transfer_table": gr.Dataframe(first.get("transfer_table", {"headers": TABLE_HEADERS, "data": []}),
                                          label="Transfer: backdoor removal by method", interactive=False,
                                          visible=False),
           "table": gr.Dataframe(first.get("table", empty), label="Accuracy, spread and novelty by source",
                                 interactive=False)}
    more = first.get("more", {})
    out["more"] = gr.CheckboxGroup(more.get("choices", []), value=more.get("value", []), label="More sources",
                                   info="the plots and the table show the generated sets, the originals, the average "
                                        "and the Gaussian at the generated sets' novelty; tick any other source of the "
                                        "run (the JSON report holds them all)", elem_id="more-sources")
    out["report"], out["ticked"] = gr.State(first.get("report")), gr.State([])  # the report shown; the ticks
    with gr.Row():
        out["acc_plot"] = gr.Plot(first.get("acc_plot"), label="Accuracy distribution")
        out["asr_plot"] = gr.Plot(first.get("asr_plot"), label="ASR distribution", visible=False)
    out["asr_scatter"] = gr.Plot(first.get("asr_scatter"), label="ACC vs. ASR", visible=False)
    with gr.Row():
        out["tsne_plot"] = gr.Plot(first.get("tsne_plot"), label="t-SNE")
        out["iou_plot"] = gr.Plot(first.get("iou_plot"), label="Accuracy vs. novelty")
    with gr.Row():
        out["report_file"] = gr.File(first.get("report_file"), label="JSON report")
        out["params_file"] = gr.File(first.get("params_file"), label="Generated parameters (safetensors)")
    gr.Markdown(text.HOW_TO_READ)
    return out


OUTPUT_ORDER = ["report_file", "params_file", "table", "acc_plot", "asr_plot", "tsne_plot", "iou_plot", "status",
                "asr_scatter", "transfer_table", "more", "report", "ticked"]
VIEWS = ["table", "acc_plot", "asr_plot", "tsne_plot", "iou_plot", "asr_scatter"]  # what `_shown` returns


def example_views(bundle_name: str, target: str) -> list | None:
    """The page's views of the shipped example run of `bundle_name` on `target` (None: no example of this bundle)."""
    if not bundle_name:
        return None
    example = load_example(bundle_name, target, load_bundle(bundle_name).digest)
    return views(example["report"], example["files"], example=example) if example else None


def _example_buttons(inp: dict, out: dict) -> None:
    """One button per shipped example: its target chosen in the form and its finished run shown (no queue)."""
    with gr.Row():
        for target in EXAMPLE_TARGETS:
            button = gr.Button(f"Example: {target} target", size="sm", variant="secondary")

            def show(bundle: str, target=target):
                shown = example_views(bundle, target)
                if shown is None:
                    raise gr.Error(f"no shipped example for bundle {bundle!r}; press Run")
                return [target, *shown]
            button.click(show, inp["bundle"], [inp["target"], *(out[k] for k in OUTPUT_ORDER)], **LIGHT)


def build_demo(default_bundle: str | None = None, warm: bool = False) -> gr.Blocks:
    """The page. With `warm`, the default run's engines are built in a thread meanwhile (warm_default)."""
    shipped = shipped_bundles()
    default_bundle = default_bundle or next(iter(shipped), "")
    if warm and default_bundle:
        threading.Thread(target=warm_default, args=(default_bundle,), daemon=True, name="pdiff-warm").start()
    # delete_cache: gradio's copies of uploads and downloads older than an hour go, checked hourly
    with gr.Blocks(title="pdiff: parameter diffusion", delete_cache=(KEEP_RUNS_S, KEEP_RUNS_S)) as demo:
        gr.Markdown(text.INTRO)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                inp, trigger_box, condition_box = _inputs(shipped, default_bundle)
                run = gr.Button("Run", variant="primary")
            with gr.Column(scale=2):
                out = _outputs(example_views(default_bundle, "clean"))  # the page opens on a finished run
                _example_buttons(inp, out)
        heads_panel()  # heads for a trunk the head generator never saw (app.heads: its own event, /heads)
        inp["bundle"].change(bundle_changed, inp["bundle"],
                             [inp["layers"], inp["target"], condition_box, inp["condition"], inp["acc"]], **LIGHT)
        # the backdoor views only where backdoor metrics apply: a victim or an uploaded model
        inp["target"].change(lambda t: [gr.update(visible=t != "clean")] * 3, inp["target"],
                             [out["asr_plot"], out["asr_scatter"], out["transfer_table"]], **LIGHT)
        inp["target"].change(lambda t: gr.update(visible=t == "upload"), inp["target"], trigger_box, **LIGHT)
        inp["condition"].change(lambda c: gr.update(visible=c == "acc"), inp["condition"], inp["acc"], **LIGHT)
        # the form's fields reach `generate` by name: they are the API's parameters (request.FORM). Its stages
        # stream in: the generated models first, then the baselines, then the t-SNE
        # ticking a source redraws the table and the plots from the report the page holds: no run, no queue
        out["more"].input(show_more, [out["report"], out["more"]], [*(out[k] for k in VIEWS), out["ticked"]], **LIGHT)
        run.click(generate, inputs_kwargs={**inp, "more": out["ticked"]}, outputs=[out[k] for k in OUTPUT_ORDER],
                  api_name="generate", concurrency_limit=1, show_progress="full")  # one GPU / CPU job at a time
    # a classroom's worth of runs wait their turn; a waiting browser shows "queue: k/n" and an ETA. Beyond
    # MAX_QUEUE a browser is told "This application is currently busy. Please try again." and an API client
    # gets "Queue is full! Please try again."
    demo.queue(max_size=MAX_QUEUE, default_concurrency_limit=1)
    return demo


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now: for tests and benches that start a real server beside others."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def launch(demo: gr.Blocks, **kwargs) -> None:
    """One launch path for app.py and tests: honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # the example runs' report and parameter files are served from where they ship
    allowed = [*kwargs.pop("allowed_paths", []), *([str(EXAMPLES)] if EXAMPLES else [])]
    demo.launch(max_file_size=MAX_UPLOAD, allowed_paths=allowed, **kwargs)
