"""build_demo() -> gr.Blocks: layout and wiring; handlers at module level only format."""
from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path

import gradio as gr

from pdiff.app import plots
from pdiff.app import texts as text
from pdiff.app.allowlist import allowed_roots
from pdiff.app.request import FORM, MAX_N, RunRequest, target_choices
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
from pdiff.studies.report import run_report
from pdiff.studies.transfer import TABLE_HEADERS, table_rows

# per (bundle, target, layers): trunk features, triggered test set and the originals' results, kept between runs
ENGINES = EngineCache(size=4)
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


@lru_cache(maxsize=2)
def _run_data(dataset: str) -> RunData:
    """The test split and, where available, the training split (validation, BatchNorm images, the defences'
    budget), loaded once per dataset; a Space may have no training split."""
    try:
        train = Split.load(dataset, "train")
    except DataError:
        train = None
    return RunData(_test_split(dataset), train, DataSpec())


@_gpu
def _compute(request: RunRequest, progress):
    """The GPU part: sample, splice, evaluate. Returns plain data; figures are built outside."""
    data = _run_data(request.bundle.task.dataset)
    if request.settings.defences and request.target.trigger is not None and data.train is None:
        _train_split(request.bundle.task.dataset)  # raises: the defences need the training split
    return run_report(request.bundle, request.target, data, request.sampling, request.settings, ENGINES,
                      progress=lambda frac, desc: progress(frac, desc=desc), device=resolve_device("auto"))


def generate(victim_file: str | None = None, progress=gr.Progress(), **form):
    """Run: sample parameter sets, splice into the target, evaluate; return report, files, tables and figures.

    The form's fields (request.FORM; an API client passes only those it changes): bundle; target (clean, victim, one
    of the bundle's named victims such as finetuned-blended, or upload with `victim_file`); trigger_*, patch_*,
    blend_*: the uploaded model's trigger (data.triggers.trigger_from_fields; 'assumed' scores it against the
    bundle's BadNets trigger and says so in the report; named victims use their own); layers; n, sampler, steps,
    seed; defences (fine-tune, re-init, FT, FP, CLP on a 5 % clean budget: needs the training split).
    """
    from pdiff.core.files import write_json

    try:
        bundle = load_bundle(form.get("bundle", ""))
        request = RunRequest.from_form({**form, "victim_file": victim_file}, bundle)
        report, vectors = _compute(request, progress)
    except (ValueError, BundleError, TargetError, DataError, OSError) as e:
        raise gr.Error(str(e)) from None
    except Exception as e:  # never a stack trace in the page; the app keeps serving
        raise gr.Error(f"{type(e).__name__}: {e}") from None
    out = _run_folder()
    report_path = out / "report.json"
    write_json(report_path, report)
    params_path = Samples(vectors, request.sampling, bundle).save(out / "generated.safetensors")
    backdoor = report["backdoor"] == "applicable"
    table = {"headers": plots.summary_headers(report), "data": plots.summary_rows(report)}
    sources = {"generated": report["generated"], "originals": report["originals"], **report["baselines"],
               **report.get("defences", {})}
    transfer = {"headers": TABLE_HEADERS, "data": table_rows(report["target"], sources) if backdoor else []}
    return (str(report_path), str(params_path), table, plots.accuracy_distribution(report),
            plots.asr_distribution(report) if backdoor else None, plots.tsne_scatter(report),
            plots.accuracy_vs_iou(report), _status(report), plots.acc_vs_asr(report) if backdoor else None, transfer)


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


def _status(report: dict) -> str:
    s, o, t = report["summary"]["generated"], report["summary"]["originals"], report["target"]
    if s["mean"] is None:
        return f"All {report['n']} generated parameter sets had non-finite values; nothing to evaluate."
    line = (f"**{report['n'] - report['generated']['nonfinite']} generated models** on `{t['name']}`: "
            f"accuracy best {s['best']:.2f} / mean {s['mean']:.2f} / median {s['median']:.2f} / min {s['min']:.2f} "
            f"(originals best {o['best']:.2f} / mean {o['mean']:.2f}; target as-is {t['acc']:.2f}). "
            f"Sampling {report['timings_s']['sample']:.1f} s, evaluation {report['timings_s']['evaluate']:.1f} s "
            f"on {report['device']}.")
    if report["generated"]["nonfinite"]:
        line += f" {report['generated']['nonfinite']} sets had non-finite values and were left out."
    if report["backdoor"] != "applicable":
        line += f" Backdoor metrics {report['backdoor']}."
    described = trigger_line(t)
    return line + (f" The {described}." if described else "")


def bundle_changed(bundle: str):
    """When the bundle changes: its layers become the choices, all selected; its victims become targets."""
    try:
        b = load_bundle(bundle)
    except (ValueError, BundleError, OSError) as e:
        raise gr.Error(str(e)) from None
    return gr.update(choices=[ALL_LAYERS, *b.names], value=[ALL_LAYERS]), gr.update(choices=target_choices(b), value="clean")


def _inputs(shipped: dict, default_bundle: str) -> tuple[dict, gr.Group]:
    """The left column: bundle, target, upload and its trigger, layers, sampling settings, the defence box
    (the API's parameters, request.FORM's order and defaults); and the group of trigger fields, shown for an upload."""
    default_layers = [ALL_LAYERS, *(load_bundle(default_bundle).names if default_bundle else [])]
    targets = target_choices(load_bundle(default_bundle)) if default_bundle else ["clean", "upload"]
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
        defences=gr.Checkbox(FORM["defences"], label="Defences (fine-tune, re-init, FT, FP, CLP)",
                             info="for a backdoored target, on 5% of the training images: the target's own layers "
                                  "fine-tuned or re-initialised, the whole target fine-tuned (FT), fine-pruning (FP), "
                                  "and the data-free CLP; needs the training split, adds a few minutes on a CPU"),
    )
    return inp, trigger_box


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


def _outputs() -> dict:
    """The right column, in the order `generate` returns its values."""
    out = {"status": gr.Markdown("Press **Run** to sample and evaluate.", elem_id="status"),
           "transfer_table": gr.Dataframe(label="Transfer: backdoor removal by method", interactive=False,
                                          visible=False),
           "table": gr.Dataframe(label="Accuracy, spread and novelty by source", interactive=False)}
    with gr.Row():
        out["acc_plot"] = gr.Plot(label="Accuracy distribution")
        out["asr_plot"] = gr.Plot(label="ASR distribution", visible=False)
    out["asr_scatter"] = gr.Plot(label="ACC vs. ASR", visible=False)
    with gr.Row():
        out["tsne_plot"] = gr.Plot(label="t-SNE")
        out["iou_plot"] = gr.Plot(label="Accuracy vs. novelty")
    with gr.Row():
        out["report_file"] = gr.File(label="JSON report")
        out["params_file"] = gr.File(label="Generated parameters (safetensors)")
    gr.Markdown(text.HOW_TO_READ)
    return out


OUTPUT_ORDER = ["report_file", "params_file", "table", "acc_plot", "asr_plot", "tsne_plot", "iou_plot", "status",
                "asr_scatter", "transfer_table"]


def build_demo(default_bundle: str | None = None) -> gr.Blocks:
    shipped = shipped_bundles()
    default_bundle = default_bundle or next(iter(shipped), "")
    # delete_cache: gradio's copies of uploads and downloads older than an hour go, checked hourly
    with gr.Blocks(title="pdiff: parameter diffusion", delete_cache=(KEEP_RUNS_S, KEEP_RUNS_S)) as demo:
        gr.Markdown(text.INTRO)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                inp, trigger_box = _inputs(shipped, default_bundle)
                run = gr.Button("Run", variant="primary")
            with gr.Column(scale=2):
                out = _outputs()
        # light events skip the queue: they never wait behind (or get refused by) a full queue of runs
        inp["bundle"].change(bundle_changed, inp["bundle"], [inp["layers"], inp["target"]], api_name=False, queue=False)
        # the backdoor views only where backdoor metrics apply: a victim or an uploaded model
        inp["target"].change(lambda t: [gr.update(visible=t != "clean")] * 3, inp["target"],
                             [out["asr_plot"], out["asr_scatter"], out["transfer_table"]], api_name=False, queue=False)
        inp["target"].change(lambda t: gr.update(visible=t == "upload"), inp["target"], trigger_box, api_name=False,
                             queue=False)
        # the form's fields reach `generate` by name: they are the API's parameters (request.FORM)
        run.click(generate, inputs_kwargs=inp, outputs=[out[k] for k in OUTPUT_ORDER],
                  api_name="generate", concurrency_limit=1)  # one GPU / CPU job at a time
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
    demo.launch(max_file_size=MAX_UPLOAD, **kwargs)
