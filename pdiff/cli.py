"""`python -m pdiff <command>`: the parser and one line per error. Each subcommand's flags and its call live in
pdiff/commands/ (build: collect, train; measure: sample, evaluate; studies: transfer, loto, trunks; heads: heads;
hub: push, pull), where the flags become the settings objects the library takes; the recipes themselves are the
library's."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from pdiff.commands import build, heads, hub, measure, studies
from pdiff.commands.common import FMT
from pdiff.core import dist
from pdiff.data.datasets import DataError

SUBCOMMANDS = (build.add_collect, build.add_train, measure.add_sample, measure.add_evaluate, studies.add_transfer,
               studies.add_loto, studies.add_trunks, heads.add_heads, hub.add_push, hub.add_pull)


def build_parser() -> argparse.ArgumentParser:
    # the installed console script is `pdiff`; `python -m pdiff` runs this module as __main__
    prog = "pdiff" if Path(sys.argv[0]).name == "pdiff" else "python -m pdiff"
    parser = argparse.ArgumentParser(prog=prog, formatter_class=FMT,
                                     description="Neural-network parameter diffusion: collect checkpoints, train an "
                                                 "autoencoder + latent DDPM, sample, splice and evaluate.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in SUBCOMMANDS:
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
        where = f" (rank {dist.rank()} of {dist.world()})" if dist.world() > 1 else ""
        print(f"error{where}: {_message(e)}", file=sys.stderr)
        return 2
    finally:
        dist.close()


def _message(e: Exception) -> str:
    if isinstance(e, (ValueError, DataError, OSError, dist.RankError)):
        return str(e)
    if isinstance(e, KeyError):
        return f"missing entry {e.args[0]!r} in an input file"
    return f"{type(e).__name__}: {e} (run with PDIFF_DEBUG=1 for the traceback)"
