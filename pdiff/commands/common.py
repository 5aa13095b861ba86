"""What every subcommand shares: the flags for the device and seed, the data, sampling and the trigger, and the
edge's conversions of them into typed objects (a SamplingSpec, a RunData, a bundle on its device, a Target), once."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pdiff.core import dist
from pdiff.core.settings import SAMPLERS, DataSpec, SamplingSpec
from pdiff.data.datasets import DataError, Split
from pdiff.data.triggers import TRIGGERS

FMT = argparse.ArgumentDefaultsHelpFormatter


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--seed", type=int, default=SamplingSpec.seed, help="seed for every random choice")


def add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", type=Path, default=None,
                   help="folder with the dataset files (Fashion-MNIST: the four IDX .gz files; CIFAR-10/100: the "
                        "folder holding cifar-10-batches-py/ or cifar-100-python/)")
    p.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
    p.add_argument("--train-subset", type=int, default=None, help="use only the first N training images")
    p.add_argument("--test-subset", type=int, default=None, help="use only the first N test images")


def add_sampling(p: argparse.ArgumentParser) -> None:
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


def add_trigger(p: argparse.ArgumentParser) -> None:
    p.add_argument("--trigger", default=None,
                   help=f"the trigger to score the target against: a preset ({', '.join(TRIGGERS)}), a trigger spec "
                        "(.json), or none (no backdoor metrics). Default: the victim's own (its report, or a "
                        "victim-*.json beside a model file), else the bundle's BadNets trigger, said in the report")


def add_report(p: argparse.ArgumentParser, func) -> None:
    """What a subcommand that writes a JSON report ends with: --json, the data and the common flags, and its call."""
    p.add_argument("--json", type=Path, required=True, help="where to write the report")
    add_data(p)
    add_common(p)
    p.set_defaults(func=func)


def sampling_spec(args) -> SamplingSpec:
    return SamplingSpec(n=args.n, sampler=args.sampler, steps=args.steps, seed=args.seed, condition=args.condition,
                        guidance=args.guidance)


def data_split(args, task, name: str) -> Split:
    """One split of the task's dataset ("train" or "test"), cut to --train-subset / --test-subset."""
    data = Split.load(task.dataset, name, args.data_dir, args.download)
    return data.subset(getattr(args, f"{name}_subset", None))


def run_data(args, task, spec: DataSpec, train: bool | None):
    """The run's data: the test split and, when `train` is True, the training split (None: where it is
    available; a missing one is said on stderr, since the report can do without it)."""
    from pdiff.data.plan import RunData

    training = None
    if train:
        training = data_split(args, task, "train")
    elif train is None:
        try:
            training = data_split(args, task, "train")
        except DataError as e:  # the test split alone still makes a report; say what is missing
            print(f"note: no training split, so no validation (matched noise, selection) and no BatchNorm "
                  f"re-estimation ({e})", file=sys.stderr)
    return RunData(data_split(args, task, "test"), training, spec)


def bundle_on_device(args):
    """The --bundle, loaded onto the --device: (bundle, device)."""
    from pdiff.core.runtime import resolve_device
    from pdiff.generator.locate import load_bundle

    device = resolve_device(args.device)
    return load_bundle(args.bundle, device), device


def typed_target(bundle, name, trigger):
    """The user's target (a name or file) and trigger choice, typed once: a measure.targets.Target."""
    from pdiff.measure.targets import resolve_target

    return resolve_target(bundle, name, trigger)


def print_json(obj) -> None:
    if dist.is_main():  # under torchrun every rank holds the result; one prints it
        print(json.dumps(obj, indent=1))


def write_report(path: Path, report: dict, text: str) -> None:
    """Write a command's JSON report (atomically) and print its human summary: rank 0 alone, under torchrun."""
    from pdiff.core.files import write_json

    if not dist.is_main():
        return
    write_json(path, report)
    print(text)
    print(f"report written to {path}")


def progress_bar(desc: str):
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
