"""`heads`: heads for a trunk the head generator never saw, from K labelled shots per class and an unlabelled pool
(studies.heads.heads_for_target); the flags become a HeadStudySpec and a pool here, once."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from pdiff.commands.common import FMT, add_common, add_data, data_split, write_report
from pdiff.core.settings import SAMPLERS, VALIDATION
from pdiff.data.shots import check_pool
from pdiff.generator.headkit import DEFAULT_KIT
from pdiff.studies.heads import TARGET, HeadStudySpec

CONDITIONS = (f"trunk={TARGET}",)  # what a head generator is asked for: the target's own trunk


def add_heads(sub) -> None:
    spec = HeadStudySpec()
    p = sub.add_parser("heads", formatter_class=FMT,
                       help="heads for a trunk the head generator never saw, from K labelled shots per class and an "
                            "unlabelled pool, beside every data-fit control on the same images",
                       description="Ask the equivariant head generator for N heads (bn3's affine and the linear "
                                   "layer) of a target model, conditioned on the target's own features (trunk=target) "
                                   "of K labelled shots per class and an unlabelled pool drawn with --seed from the "
                                   "first training images (never the validation or test split, never the images the "
                                   "generator trained on). Reported on the test split beside the target's own "
                                   "head, the sets' mean, and the data-fit controls on the same images (nearest "
                                   "class mean, probe, LDA, self-training, the stitch onto each training trunk and "
                                   "their ensemble, the matched average), each with its clean-image ledger, and the "
                                   "checks that the condition is used (unconditional, swap, random, retrieval). "
                                   "Accuracies in percent.")
    _add_target_flags(p)
    _add_draw_flags(p)
    p.add_argument("--n", type=int, default=spec.n, help="heads to generate")
    p.add_argument("--sampler", choices=SAMPLERS, default=spec.sampler)
    p.add_argument("--steps", type=int, default=spec.steps, help="DDIM steps (DDPM always runs all T steps)")
    p.add_argument("--guidance", type=float, default=spec.guidance, help="the classifier-free guidance scale")
    p.add_argument("--json", type=Path, required=True, help="where to write the report")
    add_data(p)
    add_common(p)
    p.set_defaults(func=cmd_heads)


def _add_target_flags(p) -> None:
    """The generator, the target and what the generator is asked for."""
    p.add_argument("--generator", default=DEFAULT_KIT,
                   help="a shipped head generator's name (checkpoints/NAME/heads) or a folder with heads.json and "
                        "donors.json")
    p.add_argument("--target", type=Path, required=True,
                   help="the model to write heads for (safetensors or a PyTorch state dict) of the generator's task: "
                        "a ConvNet whose head reads 128 features, e.g. "
                        "checkpoints/fmnist-convnet-trunks/held-out/trunk-44.safetensors")
    p.add_argument("--condition", choices=CONDITIONS, default=CONDITIONS[0],
                   help="what the generator is asked for: the target's own trunk, from its features")


def _add_draw_flags(p) -> None:
    """The images the condition and the controls rest on: K shots per class, the pool, the validation images."""
    p.add_argument("--shots", type=int, default=5, help="labelled images per class")
    p.add_argument("--pool", type=int, default=HeadStudySpec.pool, help="unlabelled images, drawn from the training "
                                                                         "split")
    p.add_argument("--pool-indices", type=Path, default=None,
                   help="your own unlabelled pool instead: a JSON list of training-split indices (or {\"split\": "
                        "\"train\", \"indices\": [...]}); refused if it reaches into the validation or test split")
    p.add_argument("--validation", type=int, default=VALIDATION,
                   help="the last N training images, which no model saw and no shot or pool image is drawn from")


def cmd_heads(args) -> int:
    from pdiff.core.runtime import resolve_device
    from pdiff.generator.headkit import load_kit
    from pdiff.models.loading import load_state_file
    from pdiff.studies.heads import head_lines, heads_for_target

    # the generator and its training trunks, the target, the splits and the user's pool
    kit = load_kit(args.generator)
    target = load_state_file(args.target, kit.task)
    splits = data_split(args, kit.task, "train"), data_split(args, kit.task, "test")
    pool = read_pool(args.pool_indices, len(splits[0].labels), args.validation)
    spec = HeadStudySpec(ks=(args.shots,), pool=args.pool if pool is None else len(pool), seed=args.seed, n=args.n,
                         guidance=args.guidance, sampler=args.sampler, steps=args.steps, checks_at=args.shots,
                         validation=args.validation)
    # the heads, the controls, the report
    report = heads_for_target(kit, target, splits, spec, pool, resolve_device(args.device))
    report["target"] = str(args.target)
    write_report(args.json, report, head_lines(report))
    return 0


def read_pool(path: Path | None, n_train: int, validation: int) -> torch.Tensor | None:
    """--pool-indices: a JSON list of training-split indices, or {"split": ..., "indices": [...]}; one line for a
    pool from another split or one that reaches into the validation split."""
    if path is None:
        return None
    try:
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"--pool-indices {path}: not a readable JSON file ({e})") from None
    split, indices = (("train", obj) if isinstance(obj, list) else
                      (obj.get("split", "train"), obj.get("indices")) if isinstance(obj, dict) else ("train", None))
    if not isinstance(indices, list) or not all(isinstance(i, int) for i in indices) or not indices:
        raise ValueError(f"--pool-indices {path}: expected a non-empty list of whole training-image indices")
    pool = torch.tensor(indices, dtype=torch.long)
    if split != "train":  # indices into the training split are checked where the pool is drawn (data.shots)
        check_pool(pool, n_train, validation, split)
    return pool
