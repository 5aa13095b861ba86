"""Device choice and seeded randomness: the two things every entry point and stage needs."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


def resolve_device(name: str = "auto") -> str:
    """'auto' -> cuda when available, else cpu; an explicit cuda without a GPU is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    return name


@contextlib.contextmanager
def seeded_from(generator: torch.Generator) -> Iterator[None]:
    """Run a block under a global RNG seeded from `generator` (module constructors draw from the global
    RNG); the caller's global RNG state is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        yield


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, sched=None) -> None:
    """One gradient step (and one scheduler step): every training loop's last four lines."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if sched is not None:
        sched.step()
