"""`python -m pdiff <command>`: one short function per subcommand; argparse only."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from pdiff.collection.collect import TRUNK_MODES
from pdiff.core import dist
from pdiff.collection.victims import VICTIM_KINDS
from pdiff.core.settings import (CONDITION_KINDS, SAMPLERS, VALIDATION, CollectSpec, DataSpec,
                                 DefenceSettings, EvalSettings, SamplingSpec, StitchSettings, TransferSettings)
from pdiff.core.splice import ALL_LAYERS
from pdiff.data.datasets import DataError, Split
from pdiff.data.triggers import TRIGGERS
from pdiff.measure.stitch import SHRINK_GRID, SHRINK_MAX_DROP
from pdiff.models.tasks import DEFAULT_TASK, TASKS
from pdiff.studies.transfer import FIRST_LOOK, METHODS

_FMT = argparse.ArgumentDefaultsHelpFormatter


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--seed", type=int, default=SamplingSpec.seed, help="seed for every random choice")


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder with the dataset files (Fashion-MNIST: the four IDX .gz files; CIFAR-10/100: the "
                        "folder holding cifar-10-batches-py/ or cifar-100-python/)")
    p.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
    p.add_argument("--train-subset", type=int, default=None, help="use only the first N training images")
    p.add_argument("--test-subset", type=int, default=None, help="use only the first N test images")


def _add_sampling(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True,
                   help="a shipped bundle's name (fmnist-convnet), its folder, any bundle folder, or a Hugging Face "
                        "Hub repo id (owner/name)")
    p.add_argument("--n", "--sets", dest="n", type=int, default=SamplingSpec.n,
                   help="how many parameter sets to generate (under torchrun write --sets: torchrun's own parser "
                        "takes --n for an abbreviation of its --nnodes or --nproc-per-node)")
    p.add_argument("--sampler", choices=SAMPLERS, default=SamplingSpec.sampler)
    p.add_argument("--steps", type=int, default=SamplingSpec.steps, help="DDIM steps (DDPM always runs all T steps)")
    p.add_argument("--condition", default=SamplingSpec.condition,
                   help="what to ask a conditional bundle for: default (what it is for: acc=best for an accuracy-"
                        "conditional bundle, trunk=target for a trunk-conditional one, none otherwise), none (its "
                        "unconditional model), acc=VALUE (validation "
                        "accuracy, percent) or acc=best, trunk=target (the target's own trunk) or trunk=FILE")
    p.add_argument("--guidance", type=float, default=SamplingSpec.guidance,
                   help="the classifier-free guidance scale (0: the unconditional model; default: the scale the "
                        "bundle chose on the validation split)")


def _add_trigger(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trigger", default=None,
                   help=f"the trigger to score the target against: a preset ({', '.join(TRIGGERS)}), a trigger spec "
                        "(.json), or none (no backdoor metrics). Default: the victim's own (its report, or a "
                        "victim-*.json beside a model file), else the bundle's BadNets trigger, said in the report")


def _sampling(args) -> SamplingSpec:
    return SamplingSpec(n=args.n, sampler=args.sampler, steps=args.steps, seed=args.seed, condition=args.condition,
                        guidance=args.guidance)


def _split(args, task, split: str):
    """One split of the task's dataset, cut to --train-subset / --test-subset."""
    data = Split.load(task.dataset, split, args.data_dir, args.download)
    return data.subset(getattr(args, f"{split}_subset", None))


def _data(args, task, spec: DataSpec, train: bool | None):
    """The run's data: the test split and, when `train` is True, the training split (None: where it is
    available; a missing one is said on stderr, since the report can do without it)."""
    from pdiff.data.plan import RunData

    training = None
    if train:
        training = _split(args, task, "train")
    elif train is None:
        try:
            training = _split(args, task, "train")
        except DataError as e:  # the test split alone still makes a report; say what is missing
            print(f"note: no training split, so no validation (matched noise, selection) and no BatchNorm "
                  f"re-estimation ({e})", file=sys.stderr)
    return RunData(_split(args, task, "test"), training, spec)


def _bundle(args):
    """The --bundle, loaded onto the --device: (bundle, device)."""
    from pdiff.core.runtime import resolve_device
    from pdiff.generator.locate import load_bundle

    device = resolve_device(args.device)
    return load_bundle(args.bundle, device), device


def _target(bundle, name, trigger):
    """The user's target (a name or file) and trigger choice, typed once: a measure.targets.Target."""
    from pdiff.measure.targets import resolve_target

    return resolve_target(bundle, name, trigger)


def _print_json(obj) -> None:
    if dist.is_main():  # under torchrun every rank holds the result; one prints it
        print(json.dumps(obj, indent=1))


def _write_report(path: Path, report: dict, text: str) -> None:
    """Write a command's JSON report (atomically) and print its human summary: rank 0 alone, under torchrun."""
    from pdiff.core.files import write_json

    if not dist.is_main():
        return
    write_json(path, report)
    print(text)
    print(f"report written to {path}")


# ---- collect ---------------------------------------------------------------------------
def _add_collect(sub) -> None:
    p = sub.add_parser("collect", formatter_class=_FMT,
                       help="train a base model (or a BadNets victim) and collect K train_layer checkpoints",
                       description="Train the task's base model, save it, then keep training only train_layer on "
                                   "the frozen trunk (BatchNorm statistics frozen too) and save it K times. "
                                   "With --trigger, train a backdoored victim instead and report ACC, ASR and RA.")
    p.add_argument("--task", default=DEFAULT_TASK, choices=sorted(TASKS))
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--k", type=int, default=None, help="checkpoints to collect (task default: 200)")
    p.add_argument("--epochs", type=int, default=None, help="base training epochs (task default)")
    p.add_argument("--save-every", type=int, default=None, help="training steps between saved checkpoints")
    p.add_argument("--train-layer", default=None,
                   help="comma-separated parameter names to collect, in order (task default)")
    p.add_argument("--storage-dtype", choices=("float32", "float16"), default=None,
                   help="how the checkpoints are stored (task default); float16 halves a large collection, and "
                        "accuracies are measured on the stored values")
    p.add_argument("--trunks", type=int, default=CollectSpec.trunks,
                   help="collect on M trunks: the base and M-1 copies of it fine-tuned briefly on clean data "
                        "(recipe trunk_epochs), about K/M checkpoints each; the manifest records each one's trunk")
    p.add_argument("--trunk-mode", choices=TRUNK_MODES, default=CollectSpec.trunk_mode,
                   help="how trunks 1.. differ from the base: finetune (fine-tuned briefly at a quarter of the rate), "
                        "reinit (first half of the trunk re-initialised, whole model retrained for trunk_epochs), "
                        "scratch (trained from another initialisation; reach it with `loto --stitch`)")
    p.add_argument("--from-base", type=Path, default=None,
                   help="skip base training: collect on this model file (e.g. another collection's base.safetensors)")
    p.add_argument("--trigger", "--backdoor", dest="trigger", default=None,
                   help=f"train a backdoored victim instead, with this trigger: a preset ({', '.join(TRIGGERS)}: "
                        "3x3 white patch bottom-right / a noise pattern mixed in at opacity 0.1) or a trigger spec "
                        "(.json; see pdiff/backdoor.py). The victim file is named after kind, trigger, target and rate")
    p.add_argument("--victim-kind", choices=VICTIM_KINDS, default="scratch",
                   help="scratch: trained from random init; finetuned: the clean base in --out fine-tuned on poisoned data")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the base and checkpoints of a collection already in --out (its victims stay)")
    p.add_argument("--name", default=None,
                   help="the victim's name (its files: victim-NAME.safetensors); default: kind and trigger, e.g. "
                        "scratch-badnets. Several victims of one kind and trigger need names of their own")
    p.add_argument("--validation", type=int, default=DataSpec.validation,
                   help=f"hold the last N training images out of every model's training: the validation split "
                        f"(default: {VALIDATION}, or half the training images where --train-subset leaves fewer than "
                        f"{2 * VALIDATION}; 0: train on all)")
    p.add_argument("--train-on", choices=("pool", "budget"), default="pool",
                   help="pool: the training split less the validation images; budget: only the clean budget "
                        "(--clean-budget of the training split, drawn with --budget-seed from the pool): a budget donor, "
                        "the clean model a defender who holds only the budget can train")
    p.add_argument("--clean-budget", type=float, default=DataSpec.budget, help="the budget's share of the training split")
    p.add_argument("--budget-seed", type=int, default=0, help="the seed of the budget's one draw (--train-on budget)")
    p.add_argument("--blend-alpha", type=float, default=None, help="opacity of a blend trigger (the trigger's: 0.1)")
    p.add_argument("--target-label", type=int, default=None, help="backdoor target class (the trigger's: 0)")
    p.add_argument("--poison-rate", type=float, default=None,
                   help="share of training images poisoned (the trigger's: 0.1); 0.01 and 0.05 make victims "
                        "named ...-1pct, ...-5pct")
    _add_data(p)
    _add_common(p)
    p.set_defaults(func=cmd_collect)


def cmd_collect(args) -> int:
    from pdiff.collection.collect import run_collect
    from pdiff.collection.victims import run_victim
    from pdiff.core.runtime import resolve_device
    from pdiff.data.plan import RunData
    from pdiff.models.tasks import build_model, get_task

    task = get_task(args.task)
    if args.train_layer:
        task.train_layer = [n.strip() for n in args.train_layer.split(",") if n.strip()]
    if args.storage_dtype:
        task.recipe.storage_dtype = args.storage_dtype
    for field_name, value in (("epochs", args.epochs), ("k", args.k), ("save_every", args.save_every)):
        if value is not None:
            if value < 1:
                raise ValueError(f"--{field_name.replace('_', '-')} must be at least 1, got {value}")
            setattr(task.recipe, field_name, value)
    build_model(task)  # checks train_layer names before any training
    spec = CollectSpec(trunks=args.trunks, trunk_mode=args.trunk_mode)  # bad values fail before any data loads
    if args.trigger and dist.world() > 1:
        raise ValueError("a victim is one model, which one process trains: run `collect --trigger` without torchrun")
    if not args.trigger and (args.out / "manifest.json").exists() and not args.overwrite:
        raise ValueError(f"{args.out} already holds a collection (manifest.json); choose a new folder, or add "
                         "--overwrite to replace its base and checkpoints (its victims stay)")
    plan = DataSpec(validation=args.validation, budget=args.clean_budget, budget_seed=args.budget_seed)
    data = _data(args, task, plan, train=True)
    if args.train_on == "budget":  # a budget donor: every model of this collection trains on the clean budget only
        data = RunData(data.test, data.budget(torch.Generator()), DataSpec(validation=0))
    device = resolve_device(args.device)
    if args.trigger:
        trigger = _victim_trigger(args).check(task.dataset)
        report = run_victim(task, trigger, args.out, data, args.seed, device, args.victim_kind, args.name)
        _print_json({k: report[k] for k in ("file", "trigger", "acc", "asr", "ra", "train_size", "timings_s")})
        return 0
    base = None
    if args.from_base is not None:
        from pdiff.models.loading import load_target

        base = load_target(task, args.from_base).state_dict()
    t0 = time.perf_counter()
    collection = run_collect(task, data, args.seed, spec, base, device=device)
    if args.train_on == "budget":
        collection.info["trained_on"] = {"what": "the clean budget", **plan.to_dict(), "images": len(data.train.labels)}
    manifest = collection.save(args.out) if dist.is_main() else collection.manifest()  # one writer
    accs = manifest["accs"]
    _print_json({"base_acc": manifest["base_acc"], "k": manifest["k"], "acc_min": min(accs), "acc_max": max(accs),
                 "acc_mean": sum(accs) / len(accs), "diversity": manifest["diversity"],
                 "trunks": manifest["trunks"], "timings_s": manifest["timings_s"],
                 "wall_s": time.perf_counter() - t0})
    return 0


def _victim_trigger(args):
    """--trigger with --target-label, --poison-rate and --blend-alpha applied where given."""
    from dataclasses import replace

    from pdiff.data.triggers import NO_TRIGGER, load_trigger

    trigger = load_trigger(args.trigger)
    if trigger == NO_TRIGGER:
        raise ValueError("--trigger none: a victim needs a trigger")
    if args.blend_alpha is not None and trigger.kind != "blend":
        raise ValueError(f"--blend-alpha applies to a blend trigger; {trigger.name} is a {trigger.kind}")
    changes = {k: v for k, v in (("target", args.target_label), ("rate", args.poison_rate),
                                 ("opacity", args.blend_alpha)) if v is not None}
    if not changes:
        return trigger
    # a preset changed in its stamp is no longer that preset: it is named after its kind
    stamp_changed = "opacity" in changes and trigger.name in TRIGGERS and changes["opacity"] != trigger.opacity
    return replace(trigger, **changes, **({"name": ""} if stamp_changed else {}))


# ---- train -----------------------------------------------------------------------------
def _add_train(sub) -> None:
    p = sub.add_parser("train", formatter_class=_FMT, help="train the parameter autoencoder and latent DDPM; write a bundle",
                       description="Fit the parameter autoencoder (noise on input and latent), then the latent DDPM "
                                   "(EMA kept and saved) on a collection folder; write a bundle folder atomically, "
                                   "then report how well the autoencoder reconstructs the originals.")
    p.add_argument("--collection", type=Path, required=True, help="folder written by `collect`")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    p.add_argument("--ae-steps", type=int, default=None, help="autoencoder steps (AEConfig default)")
    p.add_argument("--ddpm-steps", type=int, default=None, help="DDPM steps (DDPMConfig default)")
    p.add_argument("--latent-channels", type=int, default=None, help="autoencoder latent channels (AEConfig default)")
    p.add_argument("--behaviour-weight", type=float, default=None,
                   help="weight of the behaviour-matching term (reconstructions' logits against the originals' on "
                        "training images; needs the training split); 0 turns it off (AEConfig default)")
    p.add_argument("--behaviour-images", type=int, default=None,
                   help="training images the behaviour term is measured on (AEConfig default); fewer is cheaper where "
                        "the generated layers include a convolution")
    p.add_argument("--ddpm-channels", type=int, default=None, help="denoiser width (DDPMConfig default)")
    p.add_argument("--ddpm-blocks", type=int, default=None, help="denoiser residual blocks (DDPMConfig default)")
    p.add_argument("--fold", type=int, default=None,
                   help="channels the parameter vector is folded into (default: the smallest power of two, at least "
                        "16, that leaves at most 256 positions)")
    p.add_argument("--hold-out-trunk", type=int, nargs="+", default=None,
                   help="leave these trunks' checkpoints out of training (multi-trunk collections; see `loto`)")
    p.add_argument("--no-recon-eval", action="store_true", help="skip evaluating the autoencoder's reconstructions")
    p.add_argument("--condition", choices=("none", *CONDITION_KINDS), default="none",
                   help="train a conditional DDPM (classifier-free guidance): acc, each checkpoint's accuracy on the "
                        "validation split; trunk, its trunk's signature (features on a fixed probe set of clean "
                        "training images). The default guidance scale is then chosen on the validation split")
    p.add_argument("--validation", type=int, default=DataSpec.validation,
                   help="the last N training images, on which acc conditions and the guidance scale are measured")
    p.add_argument("--guidance-sampler", choices=SAMPLERS, default=SamplingSpec.sampler,
                   help="the sampler the guidance scale is chosen with (default: the reports' sampler; ddim is faster "
                        "and may choose another scale; the bundle records which)")
    p.add_argument("--guidance-steps", type=int, default=SamplingSpec.steps,
                   help="DDIM steps for --guidance-sampler ddim (DDPM runs the bundle's T)")
    p.add_argument("--clean-model", type=Path, default=None,
                   help="a collection folder whose base model the bundle keeps as the `clean-model` control (a budget "
                        "donor's bundle keeps the full clean model so that its tables can show it beside the donor)")
    p.add_argument("--victims-only", action="store_true",
                   help="train nothing: replace the victims of the existing bundle at --out with the collection's "
                        "(after victims were rebuilt; the generator does not depend on them)")
    _add_data(p)
    _add_common(p)
    p.set_defaults(func=cmd_train)


def _replace_victims(folder: Path, collection) -> int:
    from pdiff.generator.bundle import Bundle

    bundle = Bundle.load(folder)
    if bundle.task.to_dict() != collection.task.to_dict():
        raise ValueError(f"the bundle at {folder} was trained on task {bundle.task.name}, the collection holds "
                         f"{collection.task.name} (or another recipe)")
    bundle.set_victims(collection.victims)
    bundle.save(folder)
    _print_json({"bundle": str(folder), "victims": {n: {k: v.report[k] for k in ("acc", "asr", "ra")}
                                                   for n, v in collection.victims.items()}})
    return 0


def _conditions(kind: str, collection, data, device):
    """Every original's condition: its accuracy on the validation split, or its trunk's signature on a probe set of
    the training images no model held out."""
    from pdiff.generator.conditions import acc_conditions, probe_set, trunk_conditions

    if kind == "acc":
        return acc_conditions(collection, data.validation, device)
    return trunk_conditions(collection, probe_set(data.fit), device)


def cmd_train(args) -> int:
    from pdiff.collection.folder import Collection
    from pdiff.core.config import AEConfig, DDPMConfig
    from pdiff.generator.training import reconstruction_report, train_bundle

    ae_cfg, ddpm_cfg = AEConfig(), DDPMConfig()
    for cfg, field, value, flag in ((ae_cfg, "steps", args.ae_steps, "--ae-steps"),
                                    (ae_cfg, "latent_channels", args.latent_channels, "--latent-channels"),
                                    (ae_cfg, "behaviour_images", args.behaviour_images, "--behaviour-images"),
                                    (ddpm_cfg, "steps", args.ddpm_steps, "--ddpm-steps"),
                                    (ddpm_cfg, "channels", args.ddpm_channels, "--ddpm-channels"),
                                    (ddpm_cfg, "blocks", args.ddpm_blocks, "--ddpm-blocks")):
        if value is not None:
            if value < 1:
                raise ValueError(f"{flag} must be at least 1, got {value}")
            setattr(cfg, field, value)
    if args.behaviour_weight is not None:
        if args.behaviour_weight < 0:
            raise ValueError(f"--behaviour-weight must be at least 0, got {args.behaviour_weight}")
        ae_cfg.behaviour_weight = args.behaviour_weight
    if args.fold is not None:
        if args.fold < 1:
            raise ValueError(f"--fold must be at least 1, got {args.fold}")
        ae_cfg.fold = args.fold
    # every trunk (a multi-trunk collection's checkpoints are scored on their own: behaviour term, reconstruction
    # report, trunk signatures); --victims-only reads none but the base
    collection = Collection.load(args.collection, args.hold_out_trunk, trunks=not args.victims_only)
    if args.victims_only:
        return _replace_victims(args.out, collection)
    from pdiff.core.runtime import resolve_device

    device = resolve_device(args.device)
    train = _split(args, collection.task, "train") if ae_cfg.behaviour_weight > 0 else None
    donor = collection.info.get("trained_on")
    if train is not None and donor:  # a budget donor's generator sees the donor's budget and no other clean image
        from pdiff.data.plan import RunData

        train = RunData(None, train, DataSpec(**{k: donor[k] for k in ("validation", "budget", "budget_seed")}))
        train = train.budget(torch.Generator())
    conditions, data = None, None
    if args.condition != "none":
        from pdiff.generator.guidance import GUIDANCE_SAMPLING

        guidance_sampling = GUIDANCE_SAMPLING.changed(sampler=args.guidance_sampler, steps=args.guidance_steps)
        data = _data(args, collection.task, DataSpec(validation=args.validation), train=True)
        conditions = _conditions(args.condition, collection, data, device)
    bundle = train_bundle(collection, ae_cfg, ddpm_cfg, args.seed, device, train, conditions)
    if conditions is not None:
        from pdiff.generator.guidance import set_guidance

        set_guidance(bundle, data.validation, device, guidance_sampling)
    if args.clean_model is not None:
        reference = Collection.load(args.clean_model, trunks=False)
        bundle.references["clean-model"] = reference.base
        bundle.meta["references"] = {"clean-model": {"train_size": reference.info.get("train_size"),
                                                     "acc": reference.trunk_accs[0], "from": args.clean_model.name}}
    if not args.no_recon_eval:
        test = _split(args, collection.task, "test")
        bundle.meta["training"]["reconstruction"] = reconstruction_report(bundle, test, device, collection.trunks)
    if dist.is_main():  # under torchrun every rank holds the same bundle; one writes it
        bundle.save(args.out)
    tr = bundle.meta["training"]
    summary = {"bundle": str(args.out), "timings_s": tr["timings_s"], "autoencoder_final_mse": tr["autoencoder_final_mse"],
               "ddpm_final_loss": tr["ddpm_final_loss"]}
    if "reconstruction" in tr:
        summary["reconstruction"] = {k: tr["reconstruction"][k] for k in ("mean_abs_diff", "max_abs_diff")}
    _print_json(summary)
    return 0


# ---- sample ----------------------------------------------------------------------------
def _add_sample(sub) -> None:
    p = sub.add_parser("sample", formatter_class=_FMT, help="sample N new parameter sets from a bundle",
                       description="Run N latents in one batch through the reverse chain (DDPM, or DDIM with "
                                   "--steps), decode and de-normalise; write {name: (N, *shape)} as safetensors.")
    _add_sampling(p)
    p.add_argument("--out", type=Path, required=True, help="output .safetensors file (or a folder: samples.safetensors in it)")
    _add_common(p)
    p.set_defaults(func=cmd_sample)


def cmd_sample(args) -> int:
    from pdiff.generator.sampling import draw

    spec = _sampling(args)
    bundle, device = _bundle(args)
    t0 = time.perf_counter()
    samples = draw(bundle, spec, device, progress=_bar(f"sample ({spec.sampler})"))
    seconds = time.perf_counter() - t0
    if dist.is_main():
        samples.save(args.out)
    _print_json({"out": str(args.out), "n": spec.n, "nonfinite": int((~samples.finite).sum()), "seconds": seconds})
    return 0


def _bar(desc: str):
    """A progress callback (done, total) drawing a tqdm bar on stderr."""
    from tqdm.auto import tqdm

    state = {}

    def update(done: int, total: int) -> None:
        if "bar" not in state:
            state["bar"] = tqdm(total=total, desc=desc, unit="step", leave=False)
        state["bar"].update(done - state["bar"].n)
        if done >= total:
            state["bar"].close()

    return update


# ---- evaluate --------------------------------------------------------------------------
def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", formatter_class=_FMT,
                       help="sample N parameter sets, splice them into a target, evaluate them and the baselines",
                       description="Sample from a bundle, splice into the target (the bundle's clean model, its "
                                   "BadNets victim, or a model file loaded safely) and evaluate every model at once "
                                   "on the test split, beside the K originals, noisy originals and interpolations. "
                                   "Writes a JSON report (accuracies in percent) and prints the familiar summary.")
    _add_sampling(p)
    p.add_argument("--target", default="clean",
                   help="clean, victim, a bundle victim's name (finetuned-badnets), or a model file (.safetensors / .pth)")
    p.add_argument("--layers", default=ALL_LAYERS, help="comma-separated subset of the bundle's layers to splice")
    _add_trigger(p)
    p.add_argument("--json", type=Path, required=True, help="where to write the report")
    p.add_argument("--save-params", type=Path, default=None, help="also write the generated vectors (.safetensors)")
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
    _add_data(p)
    _add_common(p)
    p.set_defaults(func=cmd_evaluate)


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


def cmd_evaluate(args) -> int:
    from pdiff.studies.report import familiar_lines, run_report

    sampling = _sampling(args)  # bad settings fail before anything loads
    settings = EvalSettings(layers=tuple(s.strip() for s in args.layers.split(",") if s.strip()), curves=args.curves,
                            tsne=not args.no_tsne, defences=DefenceSettings() if args.defences else None)
    spec = DataSpec(validation=args.validation, bn_images=args.bn_images)
    bundle, device = _bundle(args)
    target = _target(bundle, args.target, args.trigger)
    # the training split: needed by the defences, used where available for validation and BatchNorm statistics
    data = _data(args, bundle.task, spec, True if args.defences else (None if args.validation != 0 or args.bn_images
                                                                       else False))
    bar = _bar("evaluate")
    report, vectors = run_report(bundle, target, data, sampling, settings, device=device,
                                 progress=lambda frac, desc: bar(int(100 * frac), 100))
    if args.save_params and dist.is_main():
        from pdiff.generator.sampling import Samples

        Samples(vectors, sampling, bundle).save(args.save_params)
    _write_report(args.json, report, familiar_lines(report))
    return 0


# ---- transfer --------------------------------------------------------------------------
def _add_transfer(sub) -> None:
    p = sub.add_parser("transfer", formatter_class=_FMT,
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
    _add_sampling(p)
    p.add_argument("--victim", default="scratch",
                   help="scratch (the bundle's scratch BadNets victim), finetuned (its first fine-tuned one), a "
                        "bundle victim's name (finetuned-blended), or a victim model file; a victim-*.json beside "
                        "the file names its trigger")
    _add_trigger(p)
    p.add_argument("--clean-budget", type=float, default=None,
                   help=f"share of the training split the defences, the probe and the stitch may train on, drawn per "
                        f"seed from the training split less the validation images (default {DataSpec.budget}, "
                        "BackdoorBench's; at least one batch of 128 images). With a budget donor's bundle: the budget "
                        "the donor was trained on, the same images for every method and seed")
    p.add_argument("--validation", type=int, default=DataSpec.validation,
                   help=f"the last N training images, which no model saw and no budget is drawn from (default "
                        f"{VALIDATION}, or half a smaller training split)")
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
    p.add_argument("--methods", default="",
                   help=f"comma-separated subset of {', '.join(METHODS)}, or 'all'. Default: {', '.join(FIRST_LOOK)} "
                        "(about 15 minutes on two CPU cores at --n 20; donor only with a budget donor's bundle); 'all' "
                        "adds ANP at 2,000 mask steps (about 10 minutes more) and the layer defences")
    p.add_argument("--stitch-epochs", type=int, default=StitchSettings.epochs,
                   help="cross-entropy epochs through the base's frozen tail after the least-squares stitch")
    p.add_argument("--stitch-shrink", type=_shrink, default=StitchSettings.shrink,
                   help="an extra ridge penalty on the stitch, the same for every channel (times their mean "
                        "variance): channels nearly dormant on clean data get small weights. 'auto': the largest of "
                        f"{', '.join(map(str, SHRINK_GRID))} that keeps the clean budget's accuracy within "
                        f"{SHRINK_MAX_DROP:g} point of 0's")
    p.add_argument("--json", type=Path, required=True, help="where to write the report")
    _add_data(p)
    _add_common(p)
    p.set_defaults(func=cmd_transfer)


def cmd_transfer(args) -> int:
    from pdiff.studies.transfer import run_transfer, table, trained_methods

    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    trained = trained_methods(methods)  # unknown names refused before anything loads
    settings = TransferSettings(methods, tuple(args.seeds or [args.seed]),
                                DefenceSettings(epochs=args.defence_epochs, k=args.k_defence,
                                                anp_iterations=args.anp_iterations, anp_threshold=args.anp_threshold),
                                StitchSettings(shrink=args.stitch_shrink, epochs=args.stitch_epochs), args.revived)
    sampling = _sampling(args)
    bundle, device = _bundle(args)
    spec = _transfer_data(args, bundle.budget_donor)
    victim = _target(bundle, args.victim, args.trigger)
    report = run_transfer(bundle, victim, _data(args, bundle.task, spec, bool(trained)), sampling, settings, device)
    _write_report(args.json, report, table(report))
    return 0


def _transfer_data(args, donor: dict | None) -> DataSpec:
    """The data a transfer run uses: with a budget donor's bundle, the budget the donor was trained on (the same
    images for every method and seed), else --clean-budget drawn per seed; the validation split held out either way."""
    if donor is None:
        return DataSpec(validation=args.validation, budget=args.clean_budget or DataSpec.budget)
    if args.clean_budget not in (None, donor["budget"]):
        raise ValueError(f"--clean-budget {args.clean_budget}: this bundle's donor was trained on a budget of "
                         f"{donor['budget']}, and every method here uses the same images")
    return DataSpec(validation=donor["validation"], budget=donor["budget"], budget_seed=donor["budget_seed"])


# ---- leave-one-trunk-out --------------------------------------------------------------
def _add_loto(sub) -> None:
    p = sub.add_parser("loto", formatter_class=_FMT,
                       help="leave-one-trunk-out: a bundle trained without one trunk, spliced into that trunk",
                       description="For a bundle made with `train --hold-out-trunk I` on a multi-trunk collection "
                                   "(`collect --trunks M`): sample N sets and splice them into trunk I, beside trunk "
                                   "I as it is, its own checkpoints and the other trunks' checkpoints. Accuracies in "
                                   "percent.")
    _add_sampling(p)
    p.add_argument("--collection", type=Path, required=True, help="the multi-trunk collection the bundle came from")
    p.add_argument("--stitch", action="store_true",
                   help="also reach the held-out trunk through a stitch onto the first training trunk (for trunks "
                        "that share no features: `collect --trunk-mode scratch`), fitted on the clean budget")
    p.add_argument("--clean-budget", type=float, default=DataSpec.budget,
                   help="share of the training set the stitch is fitted on (drawn with --seed)")
    p.add_argument("--json", type=Path, required=True, help="where to write the report")
    _add_data(p)
    _add_common(p)
    p.set_defaults(func=cmd_loto)


def cmd_loto(args) -> int:
    from pdiff.studies.loto import leave_one_trunk_out, loto_lines

    sampling = _sampling(args)
    spec = DataSpec(validation=0, budget=args.clean_budget)  # the stitch's budget: from the whole training split
    bundle, device = _bundle(args)
    data = _data(args, bundle.task, spec, args.stitch)
    report = leave_one_trunk_out(bundle, args.collection, data, sampling, args.stitch, device)
    _write_report(args.json, report, loto_lines(report))
    return 0


# ---- trunks ---------------------------------------------------------------------------
def _add_trunks(sub) -> None:
    p = sub.add_parser("trunks", formatter_class=_FMT,
                       help="a trunk-conditional bundle on the trunks it held out, beside every control",
                       description="For a bundle made with `train --condition trunk --hold-out-trunk I J ...` on a "
                                   "multi-trunk collection: on each held-out trunk, the sets generated for its own "
                                   "signature beside the trunk as it is, its own checkpoints, the unconditional model, "
                                   "another trunk's signature (the swap test), a random signature, retrieval of the "
                                   "nearest training trunk's checkpoints (and their Gaussian), the average, the "
                                   "nearest class mean and a linear probe on the probe images, and a stitch fitted on "
                                   "them onto the first training trunk. Accuracies in percent.")
    _add_sampling(p)
    p.add_argument("--collection", type=Path, required=True, help="the multi-trunk collection the bundle came from")
    p.add_argument("--json", type=Path, required=True, help="where to write the report")
    _add_data(p)
    _add_common(p)
    p.set_defaults(func=cmd_trunks)


def cmd_trunks(args) -> int:
    from pdiff.studies.trunks import trunk_lines, trunk_study

    sampling = _sampling(args)
    bundle, device = _bundle(args)
    report = trunk_study(bundle, args.collection, _data(args, bundle.task, DataSpec(), False), sampling, device)
    _write_report(args.json, report, trunk_lines(report))
    return 0


# ---- push / pull -----------------------------------------------------------------------
def _add_push(sub) -> None:
    p = sub.add_parser("push", formatter_class=_FMT, help="upload a bundle folder to the Hugging Face Hub",
                       description="Check the bundle, create the Hub repo if needed, upload the folder and a "
                                   "generated model card. Needs a token (HF_TOKEN or `huggingface-cli login`).")
    p.add_argument("bundle", type=Path, help="bundle folder")
    p.add_argument("repo_id", help="owner/name on the Hub")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.set_defaults(func=cmd_push)


def cmd_push(args) -> int:
    from pdiff.generator.hub import push

    print(push(args.bundle, args.repo_id, private=args.private))
    return 0


def _add_pull(sub) -> None:
    p = sub.add_parser("pull", formatter_class=_FMT, help="download a bundle from the Hugging Face Hub",
                       description="Download a bundle repo's files (bundle.json, its safetensors, the model "
                                   "card; nothing else) into the pdiff Hub cache (PDIFF_HUB_CACHE), check it loads, "
                                   "and print its folder. Offline, the last complete download is used.")
    p.add_argument("repo_id", help="owner/name on the Hub")
    p.add_argument("--out", type=Path, default=None, help="copy into this folder instead of the Hub cache")
    p.add_argument("--max-mb", type=float, default=None,
                   help="refuse a bundle larger than this (0: no limit; default PDIFF_HUB_MAX_MB or 200)")
    p.set_defaults(func=cmd_pull)


def cmd_pull(args) -> int:
    from pdiff.generator.hub import MB, pull

    print(pull(args.repo_id, args.out, None if args.max_mb is None else int(args.max_mb * MB)))
    return 0


# ---- main ------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    # the installed console script is `pdiff`; `python -m pdiff` runs this module as __main__
    prog = "pdiff" if Path(sys.argv[0]).name == "pdiff" else "python -m pdiff"
    parser = argparse.ArgumentParser(prog=prog, formatter_class=_FMT,
                                     description="Neural-network parameter diffusion: collect checkpoints, train an "
                                                 "autoencoder + latent DDPM, sample, splice and evaluate.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_collect, _add_train, _add_sample, _add_evaluate, _add_transfer, _add_loto, _add_trunks, _add_push,
                _add_pull):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        dist.init_from_env(getattr(args, "device", "cpu"))  # under torchrun: join its process group, else nothing
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one clear line for the user; PDIFF_DEBUG=1 shows the traceback
        if os.environ.get("PDIFF_DEBUG"):
            raise
        if isinstance(e, (ValueError, DataError, OSError, dist.RankError)):
            msg = str(e)
        elif isinstance(e, KeyError):
            msg = f"missing entry {e.args[0]!r} in an input file"
        else:
            msg = f"{type(e).__name__}: {e} (run with PDIFF_DEBUG=1 for the traceback)"
        where = f" (rank {dist.rank()} of {dist.world()})" if dist.world() > 1 else ""
        print(f"error{where}: {msg}", file=sys.stderr)
        return 2
    finally:
        dist.close()
