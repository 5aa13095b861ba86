"""build_demo() -> gr.Blocks: layout and wiring; handlers at module level only format."""
from __future__ import annotations

import os
import tempfile
from functools import lru_cache
from pathlib import Path

import gradio as gr

from pdiff import plots, text
from pdiff.backdoor import CORNERS, trigger_from_fields, trigger_line
from pdiff.bundle import Bundle, BundleError
from pdiff.data import DataError, Split
from pdiff.evaluate import BN_IMAGES
from pdiff.report import EngineCache, run_report, validation_split
from pdiff.runtime import resolve_device
from pdiff.sources import allowed_roots, app_source, shipped_bundles
from pdiff.splice import ALL_LAYERS
from pdiff.targets import TargetError, target_names
from pdiff.transfer import TABLE_HEADERS, table_rows

DEFAULT_N, MAX_N = 100, 500
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
    """A shipped bundle by name, a folder under the allowed roots, or a Hub repo id (pdiff.sources); cached."""
    from pdiff.hub import fetch_bundle

    found = app_source(source, shipped_bundles(), allowed_roots())
    return Bundle.load(found if isinstance(found, Path) else fetch_bundle(found))


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
def _held_out(dataset: str) -> tuple[Split | None, Split | None]:
    """From the training split: the validation images (report.validation_split: matched noise, selection) and
    the first BN_IMAGES (BatchNorm re-estimation); (None, None) where the training split is absent, as on a Space."""
    try:
        train = _train_split(dataset)  # one load and one copy in memory, shared with the defences
    except DataError:
        return None, None
    return validation_split(train), train.subset(BN_IMAGES)


@_gpu
def _compute(bundle_source, target, layers, n, sampler, steps, seed, defences, progress, trigger=None):
    """The GPU part: sample, splice, evaluate. Returns plain data; figures are built outside."""
    bundle = load_bundle(bundle_source)
    device = resolve_device("auto")
    train = _train_split(bundle.task.dataset) if defences and target != "clean" else None
    validation, bn_images = _held_out(bundle.task.dataset)
    return run_report(bundle, target, n, seed, sampler, steps, layers, device, _test_split(bundle.task.dataset),
                      progress=lambda frac, desc: progress(frac, desc=desc), defences_train=train, engines=ENGINES,
                      validation=validation, bn_images=bn_images, trigger=trigger)


def generate(bundle: str, target: str = "clean", victim_file: str | None = None, trigger_kind: str = "assumed",
             trigger_target: int = 0, patch_size: int = 3, patch_corner: str = "bottom-right",
             blend_opacity: float = 0.1, blend_seed: int = 0, layers: list[str] | None = None,
             n: int = DEFAULT_N, sampler: str = "ddim", steps: int = 50, seed: int = 0, defences: bool = False,
             progress=gr.Progress()):
    """Run: sample n parameter sets, splice into the target, evaluate; return report, files, tables and figures.

    target: clean, victim, one of the bundle's named victims (e.g. finetuned-blended), or upload.
    trigger_*, patch_*, blend_*: the uploaded model's trigger (backdoor.trigger_from_fields); 'assumed' scores
    it against the bundle's BadNets trigger and says so in the report. Named victims use their own.
    defences: also run the defences (fine-tune, re-init, FT, FP, CLP) on a 5 % clean budget (needs the training
    split).
    """
    from pdiff.files import write_json
    from pdiff.sample import save_samples

    try:
        n, steps, seed = int(n), int(steps), int(seed)
    except (TypeError, ValueError):
        raise gr.Error("N, steps and seed must be whole numbers") from None
    if not 1 <= n <= MAX_N:
        raise gr.Error(f"N must be between 1 and {MAX_N}, got {n}")
    target_arg, trigger = _chosen_target(bundle, target, victim_file, trigger_kind, trigger_target, patch_size,
                                         patch_corner, blend_opacity, blend_seed)
    if layers is not None and len(layers) == 0:
        raise gr.Error("choose at least one layer to splice")
    try:
        report, vectors = _compute(bundle, target_arg, list(layers or []), n, sampler, steps, seed, bool(defences),
                                   progress, trigger)
        b = load_bundle(bundle)
    except (ValueError, BundleError, TargetError, DataError, OSError) as e:
        raise gr.Error(str(e)) from None
    except Exception as e:  # never a stack trace in the page; the app keeps serving
        raise gr.Error(f"{type(e).__name__}: {e}") from None
    if target == "upload":
        report["target"]["name"] = Path(target_arg).name
    out = _run_folder()
    report_path, params_path = out / "report.json", out / "generated.safetensors"
    write_json(report_path, report)
    save_samples(params_path, vectors, b, sampler, steps, seed)
    backdoor = report["backdoor"] == "applicable"
    table = {"headers": plots.summary_headers(report), "data": plots.summary_rows(report)}
    sources = {"generated": report["generated"], "originals": report["originals"], **report["baselines"],
               **report.get("defences", {})}
    transfer = {"headers": TABLE_HEADERS, "data": table_rows(report["target"], sources) if backdoor else []}
    return (str(report_path), str(params_path), table, plots.accuracy_distribution(report),
            plots.asr_distribution(report) if backdoor else None, plots.tsne_scatter(report),
            plots.accuracy_vs_iou(report), _status(report), plots.acc_vs_asr(report) if backdoor else None, transfer)


def _chosen_target(bundle: str, target: str, victim_file, *trigger_fields) -> tuple[str, object]:
    """(what resolve_target takes, the trigger): an upload's file with the trigger of its fields, or a named
    target of the bundle with its own trigger (None)."""
    if target == "upload":
        if not victim_file:
            raise gr.Error("target is 'upload' but no model file was uploaded")
        try:
            trigger = trigger_from_fields(*trigger_fields)
        except ValueError as e:
            raise gr.Error(str(e)) from None
        return (victim_file if isinstance(victim_file, str) else victim_file.name), trigger
    try:
        choices = target_choices(load_bundle(bundle))
    except (ValueError, BundleError, OSError) as e:
        raise gr.Error(str(e)) from None
    if target not in choices:
        raise gr.Error(f"unknown target {target!r}; this bundle offers {', '.join(choices)}")
    return target, None


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


def target_choices(bundle: Bundle) -> list[str]:
    """clean, the bundle's victims (the scratch BadNets one is `victim`), upload."""
    return ["clean", *target_names(bundle), "upload"]


def bundle_changed(bundle: str):
    """When the bundle changes: its layers become the choices, all selected; its victims become targets."""
    try:
        b = load_bundle(bundle)
    except (ValueError, BundleError, OSError) as e:
        raise gr.Error(str(e)) from None
    return gr.update(choices=[ALL_LAYERS, *b.names], value=[ALL_LAYERS]), gr.update(choices=target_choices(b), value="clean")


def _inputs(shipped: dict, default_bundle: str) -> tuple[dict, gr.Group]:
    """The left column: bundle, target, upload and its trigger, layers, sampling settings, the defence box
    (in `generate`'s order); and the group of trigger fields, shown for an upload."""
    default_layers = [ALL_LAYERS, *(load_bundle(default_bundle).names if default_bundle else [])]
    targets = target_choices(load_bundle(default_bundle)) if default_bundle else ["clean", "upload"]
    inp = dict(
        bundle=gr.Dropdown(choices=list(shipped), value=default_bundle, allow_custom_value=True, label="Bundle",
                           info="a shipped bundle, a Hub repo id (owner/name), or a folder under the server's "
                                "allowed bundle roots"),
        target=gr.Radio(targets, value="clean", label="Target model",
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
        n=gr.Slider(1, MAX_N, value=DEFAULT_N, step=1, label="N (parameter sets to generate)"),
        sampler=gr.Radio(["ddpm", "ddim"], value="ddim", label="Sampler",
                         info="DDPM runs all 1000 steps; DDIM is the fast option"),
        steps=gr.Slider(1, 1000, value=50, step=1, label="DDIM steps"),
        seed=gr.Number(value=0, precision=0, label="Seed"),
        defences=gr.Checkbox(False, label="Defences (fine-tune, re-init, FT, FP, CLP)",
                             info="for a backdoored target, on 5% of the training images: the target's own layers "
                                  "fine-tuned or re-initialised, the whole target fine-tuned (FT), fine-pruning (FP), "
                                  "and the data-free CLP; needs the training split, adds a few minutes on a CPU"),
    )
    return inp, trigger_box


def _trigger_inputs() -> dict:
    """The uploaded model's trigger, beside the upload (backdoor.trigger_from_fields builds it)."""
    return dict(
        trigger_kind=gr.Radio(["assumed", "patch", "blend", "none"], value="assumed", label="Trigger of the upload",
                              info="assumed: the bundle's BadNets trigger (3x3 white square, bottom-right, class 0), "
                                   "named as assumed in the report; patch: a white square; blend: a noise pattern "
                                   "mixed in; none: no backdoor metrics"),
        trigger_target=gr.Number(value=0, precision=0, label="Target class"),
        patch_size=gr.Number(value=3, precision=0, label="Patch size (pixels)"),
        patch_corner=gr.Dropdown(list(CORNERS), value="bottom-right", label="Patch corner"),
        blend_opacity=gr.Slider(0, 1, value=0.1, step=0.01, label="Blend opacity"),
        blend_seed=gr.Number(value=0, precision=0, label="Blend pattern seed"),
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
        run.click(generate, list(inp.values()), [out[k] for k in OUTPUT_ORDER],
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
