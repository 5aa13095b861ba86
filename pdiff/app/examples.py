"""The finished runs the page opens on: reports of the default bundle with the app's own defaults, on the clean
target and on the scratch BadNets victim, shipped in assets/examples/ (a visitor sees a result before pressing
anything, as Gradio's cached examples do, without running at start-up), with the results the app keeps between
runs (measure.store) for those two targets in assets/cache/.

    python -m pdiff.app.examples      # rewrites both (a minute or two on a CPU); after the default bundle changes

Each example is a folder, `<bundle>-<target>/`: example.json (how and from what it was made), report.json (the
report as the Run button gives it) and generated.safetensors (the generated parameters): the page's two download
boxes. An example made from another bundle than the one shipped now is not shown (`load_example` returns None).
"""
from __future__ import annotations

import json
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

from pdiff.core.files import write_json
from pdiff.core.paths import shipped
from pdiff.studies.formats import read

EXAMPLE_TARGETS = ("clean", "victim")
EXAMPLES = shipped("assets") / "examples" if shipped("assets") else None  # None in an installed copy
EXAMPLE, REPORT, PARAMS = "example.json", "report.json", "generated.safetensors"


def example_path(bundle_name: str, target: str) -> Path | None:
    """The example's folder."""
    return EXAMPLES / f"{bundle_name}-{target}" if EXAMPLES else None


def load_example(bundle_name: str, target: str, digest: str | None) -> dict | None:
    """The shipped example of `bundle_name` on `target`, if it was made from the bundle of this `digest`:
    {"example": how it was made, "report": its report (of the current format), "files": (report.json,
    generated.safetensors)}."""
    folder = example_path(bundle_name, target)
    if folder is None or not (folder / EXAMPLE).is_file():
        return None
    made = json.loads((folder / EXAMPLE).read_text())
    if made["bundle_digest"] != digest:
        return None
    return {"example": made, "report": read(folder / REPORT),
            "files": (str(folder / REPORT), str(folder / PARAMS))}


def write_examples(bundle_name: str = "fmnist-convnet") -> list[Path]:
    """Run the app's default request on each example target and write the examples (the t-SNE included), and the
    results those requests keep (the originals', the controls', the t-SNE map) into the shipped cache."""
    from pdiff.app.request import RunRequest
    from pdiff.core.settings import DataSpec
    from pdiff.data.datasets import Split
    from pdiff.data.plan import RunData
    from pdiff.generator.locate import load_bundle
    from pdiff.generator.sampling import Samples
    from pdiff.measure.engine import EngineCache
    from pdiff.measure.store import shipped_cache
    from pdiff.studies.report import run_report

    bundle = load_bundle(bundle_name)
    data = RunData(Split.load(bundle.task.dataset, "test"), Split.load(bundle.task.dataset, "train"), DataSpec())
    cache = shipped_cache()
    shutil.rmtree(cache, ignore_errors=True)  # only the current bundle's results ship
    # the results and t-SNE maps ship; the trunk features (5 MB per split) are each machine's to compute
    engines = EngineCache(size=2 * len(EXAMPLE_TARGETS), stored=True, roots=[cache], trunks=False)
    written = []
    for target in EXAMPLE_TARGETS:
        request = RunRequest.from_form({"bundle": bundle_name, "target": target}, bundle)
        report, vectors = run_report(bundle, request.target, data, request.sampling, request.settings, engines)
        report["bundle"] = bundle_name  # the shipped name, not this machine's folder
        made = {"bundle": bundle_name, "bundle_digest": bundle.digest, "target": target,
                "made_by": "python -m pdiff.app.examples", "made_on": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
        folder = example_path(bundle_name, target)
        write_json(folder / REPORT, report)
        Samples(vectors, request.sampling, bundle).save(folder / PARAMS)
        write_json(folder / EXAMPLE, made)
        print(f"{target}: {folder}", file=sys.stderr)
        written.append(folder)
    return written


if __name__ == "__main__":
    write_examples(*sys.argv[1:2])
