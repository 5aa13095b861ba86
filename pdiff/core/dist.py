"""Several processes, one job: PyTorch's own torch.distributed (gloo on CPUs, NCCL on GPUs), launched by torchrun.

Without torchrun nothing here does anything: one process is rank 0 of a world of one. Under torchrun the process
group is set up from torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR, ...) once, at the CLI's edge, or by the
caller of the Python API. Work is split by stride (item i goes to rank i % world); results are gathered on every
rank in their one-process order, so each rank holds what one process would have computed; rank 0 alone writes.
A failure on any rank is shared (`agree`): every rank stops with the same one-line message.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch
import torch.distributed as td

T = TypeVar("T")


class RankError(RuntimeError):
    """A failure on one rank, raised on every rank with the failing rank's message."""


def active() -> bool:
    return td.is_available() and td.is_initialized()


def rank() -> int:
    return td.get_rank() if active() else 0


def world() -> int:
    return td.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def init_from_env(device: str = "cpu") -> bool:
    """Join the process group torchrun describes in the environment (WORLD_SIZE > 1); False when there is none.
    gloo for the CPU, NCCL for CUDA devices (each rank on the GPU of its LOCAL_RANK)."""
    if active() or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return active()
    cuda = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = float(os.environ.get("PDIFF_DIST_TIMEOUT_S", "600"))
    try:
        with _native_stderr_silenced():
            td.init_process_group("nccl" if cuda else "gloo", timeout=__import__("datetime").timedelta(seconds=timeout))
    except Exception as e:  # a rendezvous that cannot be reached, a port taken, a rank that never came
        raise RankError(f"rank {os.environ.get('RANK', '?')} could not join the process group at "
                        f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}: "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    return True


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """c10d's C++ side writes a line to stderr for every failed connection attempt (dozens before the timeout); the
    one line that matters is ours, so file descriptor 2 points at /dev/null while the group forms."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def close() -> None:
    if active():
        td.destroy_process_group()


def mine(count: int) -> list[int]:
    """The items of `count` this rank works on: every world-th one, from its rank."""
    return list(range(rank(), count, world()))


def gather(items: Sequence[T], count: int) -> list[T]:
    """Every rank's `items` (for its indices mine(count)), reassembled on every rank in index order."""
    if not active():
        return list(items)
    parts: list = [None] * world()
    td.all_gather_object(parts, list(items))
    out: list = [None] * count
    for r, part in enumerate(parts):
        for i, item in zip(range(r, count, world()), part):
            out[i] = item
    return out


def broadcast(obj: T, src: int = 0) -> T:
    """`obj` as rank `src` has it, on every rank."""
    if not active():
        return obj
    box = [obj if rank() == src else None]
    td.broadcast_object_list(box, src=src)
    return box[0]


def agree(fn: Callable[[], T]) -> T:
    """fn() on every rank; if it fails on any rank, every rank raises RankError with the first failing rank's
    message, so no rank goes on to a collective the others never reach."""
    if not active():
        return fn()
    try:
        result, error = fn(), None
    except Exception as e:  # noqa: BLE001 - shared with the other ranks, then raised
        result, error = None, f"{type(e).__name__}: {e}" if not isinstance(e, (ValueError, OSError)) else str(e)
    errors: list = [None] * world()
    td.all_gather_object(errors, error)
    failed = [(r, msg) for r, msg in enumerate(errors) if msg is not None]
    if failed:
        r, msg = failed[0]
        raise RankError(msg if r == rank() or world() == 1 else f"rank {r}: {msg}")
    return result
