"""The guidance choice of a shipped conditional bundle drawn again with another sampler, the bundle left as it is:
does the scale chosen with DDIM-20 (what the default bundle recorded) stand with DDPM-1000, the reports' sampler?

    python experiments/guidance_sampler.py --bundle checkpoints/fmnist-convnet/bundle \
        --json results/conditions/guidance-ddpm.json      # minutes on one CPU thread
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(1, str(ROOT))  # from a checkout, uninstalled: pdiff is one folder up
from pdiff.core.files import write_json  # noqa: E402
from pdiff.core.settings import DataSpec, SamplingSpec  # noqa: E402
from pdiff.data.datasets import Split  # noqa: E402
from pdiff.data.plan import RunData  # noqa: E402
from pdiff.generator.guidance import GUIDANCE_SETS, choose_guidance  # noqa: E402
from pdiff.generator.locate import load_bundle  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bundle", default="checkpoints/fmnist-convnet/bundle")
    ap.add_argument("--sampler", default="ddpm", help="ddpm (all T steps) or ddim")
    ap.add_argument("--steps", type=int, default=SamplingSpec.steps, help="DDIM steps")
    ap.add_argument("--json", type=Path, required=True)
    args = ap.parse_args()
    bundle = load_bundle(args.bundle)
    if bundle.conditions is None:
        raise SystemExit(f"error: {args.bundle} is not a conditional bundle")
    validation = RunData(None, Split.load(bundle.task.dataset, "train"), DataSpec()).validation
    sampling = SamplingSpec(GUIDANCE_SETS, args.sampler, steps=args.steps, seed=0)
    scale, table = choose_guidance(bundle, validation, sampling=sampling)
    recorded = bundle.conditions.meta.get("guidance_on_validation", {})
    write_json(args.json, {"bundle": str(args.bundle), "sampler": args.sampler,
                           "steps": sampling.chain_steps(bundle.ddpm_cfg.timesteps), "sets": GUIDANCE_SETS,
                           "chosen": scale, "mean_validation_acc": table,
                           "recorded": {"guidance": bundle.conditions.meta.get("guidance"), **recorded},
                           "command": "python experiments/guidance_sampler.py " + " ".join(sys.argv[1:])})
    print(f"{args.sampler}: scale {scale:g}; " + ", ".join(f"{k}: {v:.2f}" for k, v in table.items()))


if __name__ == "__main__":
    main()
