"""`collect` and `train`: the flags become a task, a CollectSpec or a TrainSpec here, and the library builds the
artefact (collection.collect.run_collect, collection.victims.run_victim, generator.recipe.build_bundle)."""
from __future__ import annotations

import time
from pathlib import Path

from pdiff.collection.collect import TRUNK_MODES
from pdiff.collection.victims import VICTIM_KINDS
from pdiff.commands.common import FMT, add_common, add_data, data_split, print_json, run_data
from pdiff.core import dist
from pdiff.core.settings import CONDITION_KINDS, SAMPLERS, VALIDATION, CollectSpec, DataSpec, TrainSpec
from pdiff.data.triggers import TRIGGERS
from pdiff.models.tasks import DEFAULT_TASK, TASKS


# ---- collect ---------------------------------------------------------------------------
def add_collect(sub) -> None:
    p = sub.add_parser("collect", formatter_class=FMT,
                       help="train a base model (or a BadNets victim) and collect K train_layer checkpoints",
                       description="Train the task's base model, save it, then keep training only train_layer on "
                                   "the frozen trunk (BatchNorm statistics frozen too) and save it K times. "
                                   "With --trigger, train a backdoored victim instead and report ACC, ASR and RA.")
    p.add_argument("--task", default=DEFAULT_TASK, choices=sorted(TASKS))
    p.add_argument("--out", type=Path, required=True, help="output folder")
    _add_recipe_flags(p)
    _add_victim_flags(p)
    _add_plan_flags(p)
    add_data(p)
    add_common(p)
    p.set_defaults(func=cmd_collect)


def _add_recipe_flags(p) -> None:
    """What the task's recipe is changed in, and the trunks it collects on."""
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
    p.add_argument("--overwrite", action="store_true",
                   help="replace the base and checkpoints of a collection already in --out (its victims stay)")


def _add_victim_flags(p) -> None:
    p.add_argument("--trigger", "--backdoor", dest="trigger", default=None,
                   help=f"train a backdoored victim instead, with this trigger: a preset ({', '.join(TRIGGERS)}: "
                        "3x3 white patch bottom-right / a noise pattern mixed in at opacity 0.1) or a trigger spec "
                        "(.json; see pdiff/backdoor.py). The victim file is named after kind, trigger, target and rate")
    p.add_argument("--victim-kind", choices=VICTIM_KINDS, default="scratch",
                   help="scratch: trained from random init; finetuned: the clean base in --out fine-tuned on poisoned data")
    p.add_argument("--name", default=None,
                   help="the victim's name (its files: victim-NAME.safetensors); default: kind and trigger, e.g. "
                        "scratch-badnets. Several victims of one kind and trigger need names of their own")
    p.add_argument("--blend-alpha", type=float, default=None, help="opacity of a blend trigger (the trigger's: 0.1)")
    p.add_argument("--target-label", type=int, default=None, help="backdoor target class (the trigger's: 0)")
    p.add_argument("--poison-rate", type=float, default=None,
                   help="share of training images poisoned (the trigger's: 0.1); 0.01 and 0.05 make victims "
                        "named ...-1pct, ...-5pct")


def _add_plan_flags(p) -> None:
    """Which training images the models see: the validation split held out, the pool or a budget donor's budget."""
    p.add_argument("--validation", type=int, default=DataSpec.validation,
                   help=f"hold the last N training images out of every model's training: the validation split "
                        f"(default: {VALIDATION}, or half the training images where --train-subset leaves fewer than "
                        f"{2 * VALIDATION}; 0: train on all)")
    p.add_argument("--train-on", choices=("pool", "budget"), default="pool",
                   help="pool: the training split less the validation images; budget: only the clean budget "
                        "(--clean-budget of the training split, drawn with --budget-seed from the pool): a budget donor, "
                        "the clean model a defender who holds only the budget can train")
    p.add_argument("--clean-budget", type=float, default=DataSpec.budget, help="the budget's share of the training split")
    p.add_argument("--budget-seed", type=int, default=CollectSpec.budget_seed,
                   help="the seed of the budget's one draw (--train-on budget)")


def cmd_collect(args) -> int:
    from pdiff.collection.collect import run_collect
    from pdiff.core.runtime import resolve_device

    task = _task(args)
    budget = args.clean_budget if args.train_on == "budget" else None
    spec = CollectSpec(trunks=args.trunks, trunk_mode=args.trunk_mode, budget=budget, budget_seed=args.budget_seed)
    if args.trigger:  # bad values fail before any data loads
        return _victim(args, task, spec)
    if (args.out / "manifest.json").exists() and not args.overwrite:
        raise ValueError(f"{args.out} already holds a collection (manifest.json); choose a new folder, or add "
                         "--overwrite to replace its base and checkpoints (its victims stay)")
    data = run_data(args, task, DataSpec(validation=args.validation), train=True)
    t0 = time.perf_counter()
    collection = run_collect(task, data, args.seed, spec, _base(args, task), device=resolve_device(args.device))
    manifest = collection.save(args.out) if dist.is_main() else collection.manifest()  # one writer
    accs = manifest["accs"]
    print_json({"base_acc": manifest["base_acc"], "k": manifest["k"], "acc_min": min(accs), "acc_max": max(accs),
                "acc_mean": sum(accs) / len(accs), "diversity": manifest["diversity"],
                "trunks": manifest["trunks"], "timings_s": manifest["timings_s"],
                "wall_s": time.perf_counter() - t0})
    return 0


def _task(args):
    """The --task preset with --train-layer, --storage-dtype, --epochs, --k and --save-every where given, its
    train_layer names checked before any training."""
    from pdiff.models.tasks import build_model, get_task

    task = get_task(args.task)
    if args.train_layer:
        task.train_layer = [n.strip() for n in args.train_layer.split(",") if n.strip()]
    task.recipe = task.recipe.changed(storage_dtype=args.storage_dtype, epochs=args.epochs, k=args.k,
                                      save_every=args.save_every)
    build_model(task)
    return task


def _base(args, task) -> dict | None:
    """--from-base's state dict, checked against the task (None: train a base)."""
    from pdiff.models.loading import load_target

    return None if args.from_base is None else load_target(task, args.from_base).state_dict()


def _victim(args, task, spec: CollectSpec) -> int:
    """--trigger: a backdoored victim beside the collection in --out (on the donor's budget with --train-on budget)."""
    from pdiff.collection.victims import run_victim
    from pdiff.core.runtime import resolve_device

    if dist.world() > 1:
        raise ValueError("a victim is one model, which one process trains: run `collect --trigger` without torchrun")
    trigger = _victim_trigger(args).check(task.dataset)
    data = run_data(args, task, DataSpec(validation=args.validation), train=True)
    if spec.budget is not None:
        data, _ = data.budget_only(spec.budget, spec.budget_seed)
    report = run_victim(task, trigger, args.out, data, args.seed, resolve_device(args.device), args.victim_kind,
                        args.name)
    print_json({k: report[k] for k in ("file", "trigger", "acc", "asr", "ra", "train_size", "timings_s")})
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
def add_train(sub) -> None:
    p = sub.add_parser("train", formatter_class=FMT, help="train the parameter autoencoder and latent DDPM; write a bundle",
                       description="Fit the parameter autoencoder (noise on input and latent), then the latent DDPM "
                                   "(EMA kept and saved) on a collection folder; write a bundle folder atomically, "
                                   "then report how well the autoencoder reconstructs the originals.")
    p.add_argument("--collection", type=Path, required=True, help="folder written by `collect`")
    p.add_argument("--out", type=Path, required=True, help="bundle folder to write")
    _add_network_flags(p)
    _add_bundle_flags(p)
    p.add_argument("--victims-only", action="store_true",
                   help="train nothing: replace the victims of the existing bundle at --out with the collection's "
                        "(after victims were rebuilt; the generator does not depend on them)")
    add_data(p)
    add_common(p)
    p.set_defaults(func=cmd_train)


def _add_network_flags(p) -> None:
    """The autoencoder's and the denoiser's settings that differ from AEConfig's and DDPMConfig's."""
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


def _add_bundle_flags(p) -> None:
    """The rest of the TrainSpec: trunks held out, the condition and its guidance, the reference, the check."""
    p.add_argument("--hold-out-trunk", type=int, nargs="+", default=None,
                   help="leave these trunks' checkpoints out of training (multi-trunk collections; see `loto`)")
    p.add_argument("--no-recon-eval", action="store_true", help="skip evaluating the autoencoder's reconstructions")
    p.add_argument("--condition", choices=("none", *CONDITION_KINDS), default=TrainSpec.condition,
                   help="train a conditional DDPM (classifier-free guidance): acc, each checkpoint's accuracy on the "
                        "validation split; trunk, its trunk's signature (features on a fixed probe set of clean "
                        "training images). The default guidance scale is then chosen on the validation split")
    p.add_argument("--validation", type=int, default=TrainSpec.validation,
                   help="the last N training images, on which acc conditions and the guidance scale are measured")
    p.add_argument("--guidance-sampler", choices=SAMPLERS, default=TrainSpec.guidance_sampler,
                   help="the sampler the guidance scale is chosen with (default: the reports' sampler; ddim is faster "
                        "and may choose another scale; the bundle records which)")
    p.add_argument("--guidance-steps", type=int, default=TrainSpec.guidance_steps,
                   help="DDIM steps for --guidance-sampler ddim (DDPM runs the bundle's T)")
    p.add_argument("--clean-model", type=Path, default=None,
                   help="a collection folder whose base model the bundle keeps as the `clean-model` control (a budget "
                        "donor's bundle keeps the full clean model so that its tables can show it beside the donor)")


def train_spec(args) -> TrainSpec:
    """The train flags as the TrainSpec the bundle keeps (`pdiff.train` takes the same fields)."""
    from pdiff.core.config import AEConfig, DDPMConfig

    autoencoder = AEConfig().changed(steps=args.ae_steps, latent_channels=args.latent_channels, fold=args.fold,
                                     behaviour_weight=args.behaviour_weight, behaviour_images=args.behaviour_images)
    ddpm = DDPMConfig().changed(steps=args.ddpm_steps, channels=args.ddpm_channels, blocks=args.ddpm_blocks)
    return TrainSpec(autoencoder, ddpm, args.condition, args.validation, args.guidance_sampler, args.guidance_steps,
                     tuple(args.hold_out_trunk or ()), args.clean_model, not args.no_recon_eval)


def cmd_train(args) -> int:
    from pdiff.collection.folder import Collection
    from pdiff.core.runtime import resolve_device
    from pdiff.generator.recipe import build_bundle

    spec = train_spec(args)  # bad settings fail before anything loads
    # every trunk (a multi-trunk collection's checkpoints are scored on their own: behaviour term, reconstruction
    # report, trunk signatures); --victims-only reads none but the base
    collection = Collection.load(args.collection, spec.hold_out_trunks, trunks=not args.victims_only)
    if args.victims_only:
        return _replace_victims(args.out, collection)
    train, test = (data_split(args, collection.task, name) if name in spec.splits() else None
                   for name in ("train", "test"))
    bundle = build_bundle(collection, spec, train, test, args.seed, resolve_device(args.device))
    if dist.is_main():  # under torchrun every rank holds the same bundle; one writes it
        bundle.save(args.out)
    tr = bundle.info.training
    summary = {"bundle": str(args.out), "timings_s": tr["timings_s"], "autoencoder_final_mse": tr["autoencoder_final_mse"],
               "ddpm_final_loss": tr["ddpm_final_loss"]}
    if "reconstruction" in tr:
        summary["reconstruction"] = {k: tr["reconstruction"][k] for k in ("mean_abs_diff", "max_abs_diff")}
    print_json(summary)
    return 0


def _replace_victims(folder: Path, collection) -> int:
    from pdiff.generator.recipe import replace_victims

    replace_victims(folder, collection)
    print_json({"bundle": str(folder), "victims": {n: {k: v.report[k] for k in ("acc", "asr", "ra")}
                                                  for n, v in collection.victims.items()}})
    return 0
