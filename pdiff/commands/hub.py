"""`push` and `pull`: a bundle folder to the Hugging Face Hub and back (generator.hub)."""
from __future__ import annotations

from pathlib import Path

from pdiff.commands.common import FMT


def add_push(sub) -> None:
    p = sub.add_parser("push", formatter_class=FMT, help="upload a bundle folder to the Hugging Face Hub",
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


def add_pull(sub) -> None:
    p = sub.add_parser("pull", formatter_class=FMT, help="download a bundle from the Hugging Face Hub",
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
