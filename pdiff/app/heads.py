"""The page's panel for a trunk the head generator never saw: a shipped held-out trunk or an uploaded ConvNet-family
model, K labelled shots per class (the slider) and the unlabelled pool; the shipped head generator writes N heads
for it (studies.heads.heads_for_target), shown beside every data-fit control on the same images with its ledger.
Its Run event is api_name="/heads". It opens on a shipped run (`python -m pdiff.app.heads trunk-47` writes it beside
the kit), shown only while the kit's weights are those it was made with."""
from __future__ import annotations

import json
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

import gradio as gr

from pdiff.app.request import LIGHT
from pdiff.core.files import sha256, write_json
from pdiff.data.datasets import DataError, Split
from pdiff.generator.equivariant import WEIGHTS_FILE
from pdiff.generator.headkit import DEFAULT_KIT, HeadKit, load_kit, shipped_kits
from pdiff.models.loading import TargetError, load_state_file
from pdiff.studies.heads import TARGET, HeadStudySpec, heads_for_target

UPLOAD = "upload"
EXAMPLE = "example-{target}.json"  # beside the shipped kit: a finished run the panel opens on
MAX_SHOTS, MAX_HEADS = 20, 50
DEFAULT_SHOTS, DEFAULT_HEADS = 5, 10
HEADERS = ["source", "family", "labelled / unlabelled", "mean acc. (%)", "std"]
INTRO = """
### Heads for a trunk the generator never saw
A ConvNet trained from scratch writes its features in its own channel order. The head generator (trained on 40
trunks) writes a head for such a trunk from its own features of **K labelled images per class** and 1,000
unlabelled ones, drawn with the seed from the training split (never validation or test). Pick a held-out trunk or
upload a ConvNet of the same task (128 features before its last BatchNorm); the table puts the generated heads
beside every way of fitting a head to the same images without a generator, each with the images it used. See
docs/heads.md: on the held-out trunks the stitch ensemble, which needs no label, is ahead of the generated heads.
"""


@lru_cache(maxsize=1)
def _kit(name: str) -> HeadKit:
    if name not in shipped_kits():  # the box is typed by strangers: shipped kits only
        raise ValueError(f"no shipped head generator named {name!r}")
    return load_kit(name)


@lru_cache(maxsize=2)
def _splits(dataset: str) -> tuple[Split, Split]:
    return Split.load(dataset, "train"), Split.load(dataset, "test")


def held_out_trunks(name: str = DEFAULT_KIT) -> dict[str, Path]:
    """The kit's held-out trunks shipped as whole models (checkpoints/<name>/held-out/*.safetensors), by name."""
    folder = shipped_kits().get(name)
    files = sorted((folder.parent / "held-out").glob("*.safetensors"), key=lambda p: int(p.stem.split("-")[-1])) \
        if folder else []
    return {p.stem: p for p in files}


def heads_run(target: str = "", target_file: str | None = None, shots: int = DEFAULT_SHOTS, n: int = DEFAULT_HEADS,
              seed: int = 0, generator: str = DEFAULT_KIT) -> tuple[dict, str | None, str]:
    """Run: N heads for the target (a held-out trunk's name, or upload with `target_file`) from `shots` shots per
    class; returns the table, the JSON report file and a status line. A refusal is one line (gr.Error)."""
    try:
        kit = _kit(generator)
        path = target_file if target == UPLOAD else held_out_trunks(generator).get(target)
        if not path:
            raise ValueError("upload a model file" if target == UPLOAD else
                             f"target must be one of {', '.join([*held_out_trunks(generator), UPLOAD])}")
        if not 1 <= int(shots) <= MAX_SHOTS or not 1 <= int(n) <= MAX_HEADS:
            raise ValueError(f"shots must be 1..{MAX_SHOTS} and n 1..{MAX_HEADS}; got {shots} and {n}")
        spec = HeadStudySpec(ks=(int(shots),), n=int(n), seed=int(seed), checks_at=int(shots))
        report = heads_for_target(kit, load_state_file(path, kit.task), _splits(kit.task.dataset), spec)
    except (ValueError, TargetError, DataError, OSError) as e:
        raise gr.Error(str(e)) from None
    except Exception as e:  # never a stack trace in the page; the app keeps serving
        raise gr.Error(f"{type(e).__name__}: {e}") from None
    report["target"] = target if target != UPLOAD else Path(path).name
    out = Path(tempfile.mkdtemp(prefix="pdiff-heads-")) / "heads.json"
    write_json(out, report)
    return heads_table(report), str(out), _status(report)


def heads_table(report: dict) -> dict:
    """The report's sources at its one K, for a gr.Dataframe."""
    k, = report["summary"]
    sources = report["trunks"][TARGET]["k"][k]
    rows = [[name, s["family"], f"{s['ledger']['labelled']} / {s['ledger']['unlabelled']}", round(s["mean"], 2),
             round(s.get("std", 0.0), 2)] for name, s in sources.items()]
    return {"headers": HEADERS, "data": rows}


def _status(report: dict) -> str:
    k, = report["summary"]
    means = report["summary"][k]
    controls = {n: v for n, v in means.items() if report["trunks"][TARGET]["k"][k][n]["family"] == "control"}
    best = max(controls, key=controls.get)
    seen = (f" The target is the generator's training trunk {report['training_trunk']}: it saw its heads."
            if report.get("training_trunk") else "")
    return (f"**{report['target']}**, K = {k}: generated heads {means['generated']:.2f} % on average (their mean "
            f"{means['generator_mean']:.2f}); the best control on the same images, {best}, {controls[best]:.2f}; "
            f"the trunk's own head {means['own_head']:.2f}.{seen}")


def example(target: str, name: str = DEFAULT_KIT) -> dict | None:
    """The shipped run of the panel's defaults on `target` (None where there is none, or it was made with other
    weights than the kit's: a stale example is never shown)."""
    folder = shipped_kits().get(name)
    path = folder / EXAMPLE.format(target=target) if folder else None
    if path is None or not path.is_file():
        return None
    report = json.loads(path.read_text())
    return report if report.get("denoiser_sha256") == sha256(folder / WEIGHTS_FILE) else None


def write_example(target: str, name: str = DEFAULT_KIT) -> Path:
    """Run the panel's defaults on `target` and keep the report beside the kit, with the weights' SHA-256."""
    _, path, _ = heads_run(target, None, DEFAULT_SHOTS, DEFAULT_HEADS, 0, name)
    folder = shipped_kits()[name]
    report = json.loads(Path(path).read_text())
    out = folder / EXAMPLE.format(target=target)
    write_json(out, {**report, "denoiser_sha256": sha256(folder / WEIGHTS_FILE)})
    return out


def heads_panel() -> None:
    """The panel's layout and its Run event (api_name="heads"); call inside gr.Blocks. Nothing where no head
    generator is shipped (a Space holds only the default bundle)."""
    if DEFAULT_KIT not in shipped_kits():
        return
    trunks = list(held_out_trunks())
    with gr.Accordion("Heads for a new trunk (few-shot head generator)", open=False):
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                target = gr.Radio([*trunks, UPLOAD], value=trunks[-1] if trunks else UPLOAD, label="Target trunk")
                target_file = gr.File(label="ConvNet model (.safetensors or .pth state dict)", type="filepath",
                                      visible=not trunks)
                shots = gr.Slider(1, MAX_SHOTS, value=DEFAULT_SHOTS, step=1, label="Labelled shots per class (K)")
                n = gr.Slider(1, MAX_HEADS, value=DEFAULT_HEADS, step=1, label="Heads to generate (N)")
                seed = gr.Number(0, precision=0, label="Seed (the draw of shots and pool, and the sampling)")
                run = gr.Button("Write heads", variant="primary")
            with gr.Column(scale=2):
                first = example(trunks[-1]) if trunks else None  # the panel opens on a finished run
                status = gr.Markdown(_status(first) + " (a shipped run; press **Write heads** for yours: one to two "
                                     "minutes on a CPU)" if first else "Press **Write heads**: one to two minutes on a "
                                     "CPU.")
                table = gr.Dataframe(heads_table(first) if first else {"headers": HEADERS, "data": []},
                                     label="Test accuracy by source", interactive=False)
                report = gr.File(label="JSON report")
        target.change(lambda t: gr.update(visible=t == UPLOAD), target, target_file, **LIGHT)
        run.click(heads_run, [target, target_file, shots, n, seed], [table, report, status], api_name="heads",
                  concurrency_limit=1)


if __name__ == "__main__":  # python -m pdiff.app.heads trunk-47: the example the panel opens on
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m pdiff.app.heads HELD_OUT_TRUNK")
    print(write_example(sys.argv[1]))
