"""`sample` and `evaluate`: draw parameter sets from a bundle, or measure them on a target beside the originals and
the baselines (generator.sampling.draw, studies.report.run_report)."""
from __future__ import annotations

import time
from pathlib import Path

from pdiff.commands.common import (FMT, add_common, add_data, add_sampling, add_trigger, bundle_on_device, print_json,
                                   progress_bar, run_data, sampling_spec, typed_target, write_report)
from pdiff.core import dist
from pdiff.core.settings import VALIDATION, DataSpec, DefenceSettings, EvalSettings
from pdiff.core.splice import ALL_LAYERS


# ---- sample ----------------------------------------------------------------------------
def add_sample(sub) -> None:
    p = sub.add_parser("sample", formatter_class=FMT, help="sample N new parameter sets from a bundle",
                       description="Run N latents in one batch through the reverse chain (DDPM, or DDIM with "
                                   "--steps), decode and de-normalise; write {name: (N, *shape)} as safetensors.")
    add_sampling(p)
    p.add_argument("--out", type=Path, required=True, help="output .safetensors file (or a folder: samples.safetensors in it)")
    add_common(p)
    p.set_defaults(func=cmd_sample)


def cmd_sample(args) -> int:
    from pdiff.generator.sampling import draw

    spec = sampling_spec(args)
    bundle, device = bundle_on_device(args)
    t0 = time.perf_counter()
    samples = draw(bundle, spec, device, progress=progress_bar(f"sample ({spec.sampler})"))
    seconds = time.perf_counter() - t0
    if dist.is_main():
        samples.save(args.out)
    print_json({"out": str(args.out), "n": spec.n, "nonfinite": int((~samples.finite).sum()), "seconds": seconds})
    return 0


# ---- evaluate --------------------------------------------------------------------------
def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", formatter_class=FMT,
                       help="sample N parameter sets, splice them into a target, evaluate them and the baselines",
                       description="Sample from a bundle, splice into the target (the bundle's clean model, its "
                                   "BadNets victim, or a model file loaded safely) and evaluate every model at once "
                                   "on the test split, beside the K originals, noisy originals and interpolations. "
                                   "Writes a JSON report (accuracies in percent) and prints the familiar summary.")
    add_sampling(p)
    p.add_argument("--target", default="clean",
                   help="clean, victim, a bundle victim's name (finetuned-badnets), or a model file (.safetensors / .pth)")
    p.add_argument("--layers", default=ALL_LAYERS, help="comma-separated subset of the bundle's layers to splice")
    add_trigger(p)
    p.add_argument("--json", type=Path, required=True, help="where to write the report")
    p.add_argument("--save-params", type=Path, default=None, help="also write the generated vectors (.safetensors)")
    _add_report_flags(p)
    add_data(p)
    add_common(p)
    p.set_defaults(func=cmd_evaluate)


def _add_report_flags(p) -> None:
    """What the report measures beside the generated sets, and on which training images."""
    p.add_argument("--no-tsne", action="store_true", help="skip the t-SNE embedding")
    p.add_argument("--validation", type=int, default=None,
                   help="hold out the last N training images: the noise baseline matched to the generated mean "
                        "accuracy is found on them, and 'best' models are chosen on them (0: skip; default: "
                        f"{VALIDATION}, or half the training images where --train-subset leaves fewer than "
                        f"{2 * VALIDATION})")
    p.add_argument("--bn-images", type=int, default=DataSpec.bn_images,
                   help="re-estimate BatchNorm statistics that follow a generated layer on the first N training "
                        "images, per generated model, instead of splicing constant copies (0: splice them)")
    p.add_argument("--curves", action="store_true",
                   help="also evaluate the Gaussian baseline at every temperature (its accuracy-novelty curve)")
    p.add_argument("--defences", action="store_true",
                   help="for a backdoored target, also run the defences (finetune, reinit, ft, fp, clp, anp) on a 5%% "
                        "clean budget drawn from the training split less the validation images, each at its final "
                        "checkpoint (see `transfer`)")


def cmd_evaluate(args) -> int:
    from pdiff.studies.report import familiar_lines, run_report

    sampling = sampling_spec(args)  # bad settings fail before anything loads
    settings = EvalSettings(layers=tuple(s.strip() for s in args.layers.split(",") if s.strip()), curves=args.curves,
                            tsne=not args.no_tsne, defences=DefenceSettings() if args.defences else None)
    spec = DataSpec(validation=args.validation, bn_images=args.bn_images)
    bundle, device = bundle_on_device(args)
    target = typed_target(bundle, args.target, args.trigger)
    # the training split: needed by the defences, used where available for validation and BatchNorm statistics
    data = run_data(args, bundle.task, spec, True if args.defences else (None if args.validation != 0 or args.bn_images
                                                                       else False))
    bar = progress_bar("evaluate")
    report, vectors = run_report(bundle, target, data, sampling, settings, device=device,
                                 progress=lambda frac, desc: bar(int(100 * frac), 100))
    if args.save_params and dist.is_main():
        from pdiff.generator.sampling import Samples

        Samples(vectors, sampling, bundle).save(args.save_params)
    write_report(args.json, report, familiar_lines(report))
    return 0
