"""The finished runs the page opens on: reports of the default bundle with the app's own defaults, on the clean
target and on the scratch BadNets victim, shipped in assets/examples/ (a visitor sees a result before pressing
anything, as Gradio's cached examples do, without running at start-up).

    python -m pdiff.app.examples      # rewrites them (a minute or two on a CPU); after the default bundle changes

Each file holds {"example": how and from what it was made, "report": the report as the Run button would give it}.
An example made from another bundle than the one shipped now is not shown (`load_example` returns None).
"""
from __future__ import annotations

import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from pdiff.core.files import write_json
from pdiff.core.paths import shipped

EXAMPLE_TARGETS = ("clean", "victim")
EXAMPLES = shipped("assets") / "examples" if shipped("assets") else None  # None in an installed copy


def example_path(bundle_name: str, target: str) -> Path | None:
    return EXAMPLES / f"{bundle_name}-{target}.json" if EXAMPLES else None


def load_example(bundle_name: str, target: str, digest: str | None) -> dict | None:
    """The shipped example of `bundle_name` on `target`, if it was made from the bundle of this `digest`."""
    path = example_path(bundle_name, target)
    if path is None or not path.is_file():
        return None
    example = json.loads(path.read_text())
    return example if example["example"]["bundle_digest"] == digest else None


def write_examples(bundle_name: str = "fmnist-convnet") -> list[Path]:
    """Run the app's default request on each example target and write the reports (the t-SNE included)."""
    from pdiff.app.request import APP_SAMPLING
    from pdiff.core.settings import DataSpec, EvalSettings
    from pdiff.data.datasets import Split
    from pdiff.data.plan import RunData
    from pdiff.generator.locate import load_bundle
    from pdiff.measure.targets import resolve_target
    from pdiff.studies.report import run_report

    bundle = load_bundle(bundle_name)
    data = RunData(Split.load(bundle.task.dataset, "test"), Split.load(bundle.task.dataset, "train"), DataSpec())
    written = []
    for target in EXAMPLE_TARGETS:
        report, _ = run_report(bundle, resolve_target(bundle, target), data, APP_SAMPLING, EvalSettings())
        report["bundle"] = bundle_name  # the shipped name, not this machine's folder
        made = {"bundle": bundle_name, "bundle_digest": bundle.digest, "target": target,
                "made_by": "python -m pdiff.app.examples", "made_on": datetime.now(timezone.utc).strftime("%Y-%m-%d")}
        path = example_path(bundle_name, target)
        write_json(path, {"example": made, "report": report})
        print(f"{target}: {path}", file=sys.stderr)
        written.append(path)
    return written


if __name__ == "__main__":
    write_examples(*sys.argv[1:2])
