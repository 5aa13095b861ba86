"""`transfer`, `loto` and `trunks`: a bundle's sets on a backdoored victim or on held-out trunks, beside every
control (studies.transfer, studies.loto, studies.trunks); the flags become settings objects here, once."""
from __future__ import annotations

import argparse
from pathlib import Path

from pdiff.commands.common import (FMT, add_report, add_sampling, add_trigger, bundle_on_device, run_data, sampling_spec,
                                   typed_target, write_report)
from pdiff.core.settings import VALIDATION, DataSpec, DefenceSettings, StitchSettings, TransferSettings
from pdiff.data.plan import donor_spec
from pdiff.measure.stitch import SHRINK_GRID, SHRINK_MAX_DROP
from pdiff.studies.transfer import FIRST_LOOK, METHODS


# ---- transfer --------------------------------------------------------------------------
def add_transfer(sub) -> None:
    p = sub.add_parser("transfer", formatter_class=FMT,
                       help="generated layers on a backdoored victim, beside clean-weight controls and the field's "
                            "defences at a clean-data budget",
                       description="Splice generated parameter sets into a backdoored victim and measure them, on the "
                                   "same engine and in one table, beside: the controls (originals, their average, "
                                   "clean-layers: the clean model's own layers, clean-model: a clean model as it is, "
                                   "donor: a budget donor as it is, probe: a linear head on the victim's own features "
                                   "fitted on the budget) and the defences on the clean budget, each at its final "
                                   "checkpoint: finetune / reinit of the spliced layers, ft (the whole victim fine-"
                                   "tuned), fp (fine-pruning), anp (adversarial neuron pruning) and clp (data-free); "
                                   "and, through a stitch fitted on the budget from the victim's features to the clean "
                                   "model's: stitch+generated, stitch+clean-layers, stitch+victim-tail. Every row "
                                   "states its clean resources (budget images, the images behind the clean weights it "
                                   "uses, checkpoints), DER against the victim as it is, the std over models, its ASR "
                                   "after a revival attack and its wall time. Writes a JSON report.")
    add_sampling(p)
    _add_target_flags(p)
    _add_method_flags(p)
    _add_stitch_flags(p)
    add_report(p, cmd_transfer)


def _add_target_flags(p) -> None:
    """The victim, its trigger, and the clean images the methods may use."""
    p.add_argument("--victim", default="scratch",
                   help="scratch (the bundle's scratch BadNets victim), finetuned (its first fine-tuned one), a "
                        "bundle victim's name (finetuned-blended), or a victim model file; a victim-*.json beside "
                        "the file names its trigger")
    add_trigger(p)
    p.add_argument("--clean-budget", type=float, default=None,
                   help=f"share of the training split the defences, the probe and the stitch may train on, drawn per "
                        f"seed from the training split less the validation images (default {DataSpec.budget}, "
                        "BackdoorBench's; at least one batch of 128 images). With a budget donor's bundle: the budget "
                        "the donor was trained on, the same images for every method and seed")
    p.add_argument("--validation", type=int, default=DataSpec.validation,
                   help=f"the last N training images, which no model saw and no budget is drawn from (default "
                        f"{VALIDATION}, or half a smaller training split)")


def _add_method_flags(p) -> None:
    """Which methods run, over which seeds, and the defences' budgets."""
    p.add_argument("--anp-iterations", type=int, default=DefenceSettings.anp_iterations,
                   help="ANP's mask steps (BackdoorBench: 2,000)")
    p.add_argument("--anp-threshold", type=float, default=DefenceSettings.anp_threshold,
                   help="prune ANP's neurons whose mask is below this value (ANP's fixed rule); default: prune in "
                        "increasing order of the mask while the clean budget's accuracy stays within 10 %% of the "
                        "unpruned model's (fine-pruning's rule, which needs no data beyond the budget)")
    p.add_argument("--revived", type=int, default=TransferSettings.revived,
                   help="the revival attack (a few fine-tuning steps with poisoned images) runs on the first N models "
                        "of each method; 0: none")
    p.add_argument("--defence-epochs", type=int, default=DefenceSettings.epochs,
                   help="epochs ft and fp fine-tune for on the clean budget (BackdoorBench: 100; fewer on a CPU)")
    p.add_argument("--k-defence", type=int, default=None,
                   help="checkpoints along each finetune / reinit run (the bundle's K; steps = K x save_every): the "
                        "last is reported, their mean as the run-mean column")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="run every seed-dependent method once per seed and report the spread (overrides --seed)")
    p.add_argument("--methods", default="first-look",
                   help=f"comma-separated subset of {', '.join(METHODS)}, or 'all'. first-look: {', '.join(FIRST_LOOK)} "
                        "(about 2 minutes on two quiet CPU cores at --n 20; donor only with a budget donor's bundle); 'all' "
                        "adds ANP at 2,000 mask steps (about 6 minutes more) and the layer defences")


def _add_stitch_flags(p) -> None:
    p.add_argument("--stitch-epochs", type=int, default=StitchSettings.epochs,
                   help="cross-entropy epochs through the base's frozen tail after the least-squares stitch")
    p.add_argument("--stitch-shrink", type=_shrink, default=StitchSettings.shrink,
                   help="an extra ridge penalty on the stitch, the same for every channel (times their mean "
                        "variance): channels nearly dormant on clean data get small weights. 'auto': the largest of "
                        f"{', '.join(map(str, SHRINK_GRID))} that keeps the clean budget's accuracy within "
                        f"{SHRINK_MAX_DROP:g} point of 0's")


def _shrink(text: str) -> float | str:
    """--stitch-shrink: 'auto' or a number at least 0."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def cmd_transfer(args) -> int:
    from pdiff.studies.transfer import run_transfer, table, trained_methods

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip() and m.strip() != "first-look")
    trained = trained_methods(methods)  # unknown names refused before anything loads
    settings = TransferSettings(methods, tuple(args.seeds or [args.seed]),
                                DefenceSettings(epochs=args.defence_epochs, k=args.k_defence,
                                                anp_iterations=args.anp_iterations, anp_threshold=args.anp_threshold),
                                StitchSettings(shrink=args.stitch_shrink, epochs=args.stitch_epochs), args.revived)
    sampling = sampling_spec(args)
    bundle, device = bundle_on_device(args)
    spec = _transfer_data(args, bundle.budget_donor)
    victim = typed_target(bundle, args.victim, args.trigger)
    report = run_transfer(bundle, victim, run_data(args, bundle.task, spec, bool(trained)), sampling, settings, device)
    write_report(args.json, report, table(report))
    return 0


def _transfer_data(args, donor: dict | None) -> DataSpec:
    """The data a transfer run uses: with a budget donor's bundle, the budget the donor was trained on (the same
    images for every method and seed), else --clean-budget drawn per seed; the validation split held out either way."""
    if donor is None:
        return DataSpec(validation=args.validation, budget=args.clean_budget or DataSpec.budget)
    if args.clean_budget not in (None, donor["budget"]):
        raise ValueError(f"--clean-budget {args.clean_budget}: this bundle's donor was trained on a budget of "
                         f"{donor['budget']}, and every method here uses the same images")
    return donor_spec(donor)


# ---- leave-one-trunk-out --------------------------------------------------------------
def add_loto(sub) -> None:
    p = sub.add_parser("loto", formatter_class=FMT,
                       help="leave-one-trunk-out: a bundle trained without one trunk, spliced into that trunk",
                       description="For a bundle made with `train --hold-out-trunk I` on a multi-trunk collection "
                                   "(`collect --trunks M`): sample N sets and splice them into trunk I, beside trunk "
                                   "I as it is, its own checkpoints and the other trunks' checkpoints. Accuracies in "
                                   "percent.")
    add_sampling(p)
    p.add_argument("--collection", type=Path, required=True, help="the multi-trunk collection the bundle came from")
    p.add_argument("--stitch", action="store_true",
                   help="also reach the held-out trunk through a stitch onto the first training trunk (for trunks "
                        "that share no features: `collect --trunk-mode scratch`), fitted on the clean budget")
    p.add_argument("--clean-budget", type=float, default=DataSpec.budget,
                   help="share of the training set the stitch is fitted on (drawn with --seed)")
    add_report(p, cmd_loto)


def cmd_loto(args) -> int:
    from pdiff.studies.loto import leave_one_trunk_out, loto_lines

    sampling = sampling_spec(args)
    spec = DataSpec(validation=0, budget=args.clean_budget)  # the stitch's budget: from the whole training split
    bundle, device = bundle_on_device(args)
    data = run_data(args, bundle.task, spec, args.stitch)
    report = leave_one_trunk_out(bundle, args.collection, data, sampling, args.stitch, device)
    write_report(args.json, report, loto_lines(report))
    return 0


# ---- trunks ---------------------------------------------------------------------------
def add_trunks(sub) -> None:
    p = sub.add_parser("trunks", formatter_class=FMT,
                       help="a trunk-conditional bundle on the trunks it held out, beside every control",
                       description="For a bundle made with `train --condition trunk --hold-out-trunk I J ...` on a "
                                   "multi-trunk collection: on each held-out trunk, the sets generated for its own "
                                   "signature beside the trunk as it is, its own checkpoints, the unconditional model, "
                                   "another trunk's signature (the swap test), a random signature, retrieval of the "
                                   "nearest training trunk's checkpoints (and their Gaussian), the average, the "
                                   "nearest class mean and a linear probe on the probe images, and a stitch fitted on "
                                   "them onto the first training trunk. Accuracies in percent.")
    add_sampling(p)
    p.add_argument("--collection", type=Path, required=True, help="the multi-trunk collection the bundle came from")
    add_report(p, cmd_trunks)


def cmd_trunks(args) -> int:
    from pdiff.studies.trunks import trunk_lines, trunk_study

    sampling = sampling_spec(args)
    bundle, device = bundle_on_device(args)
    report = trunk_study(bundle, args.collection, run_data(args, bundle.task, DataSpec(), False), sampling, device)
    write_report(args.json, report, trunk_lines(report))
    return 0
