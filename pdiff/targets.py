"""Load target models safely: safetensors, .pth state dicts, allowlisted whole modules.

Nothing is unpickled except through `torch.load(weights_only=True)`; a whole pickled module
is accepted only when every class in it is on SAFE_MODULE_CLASSES, and then only its state
dict is kept and copied into a freshly built model of the task's architecture.
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from pdiff.archs import SAFE_MODULE_CLASSES, StagedNet
from pdiff.config import Task
from pdiff.tasks import build_model

_NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")


class TargetError(ValueError):
    """A target model file that cannot be used: unsafe, unreadable or of another architecture."""


def _is_state_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    """A state dict from what a .pth holds: the dict itself, one nested under a usual key, or a module."""
    if isinstance(obj, nn.Module):
        return obj.state_dict()
    if _is_state_dict(obj):
        return obj
    if isinstance(obj, dict):
        for key in _NESTED_KEYS:
            if key in obj and (isinstance(obj[key], nn.Module) or _is_state_dict(obj[key])):
                return _unwrap(obj[key], path)
        raise TargetError(f"{path} holds a dict with keys {sorted(map(str, obj))[:8]} but no state dict "
                          f"(looked for tensors, or one under {', '.join(_NESTED_KEYS)})")
    raise TargetError(f"{path} holds a {type(obj).__name__}, not a state dict or a model")


def load_state_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a model file into a plain state dict, refusing anything that could run code."""
    path = Path(path)
    if not path.is_file():
        raise TargetError(f"no model file at {path}")
    if path.suffix == ".safetensors":
        try:
            return load_file(path)
        except (SafetensorError, OSError) as e:
            raise TargetError(f"{path} is not a readable safetensors file: {e}") from None
    try:
        with torch.serialization.safe_globals(SAFE_MODULE_CLASSES):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # not even a readable checkpoint archive
            unsafe = []
        unsafe = [g for g in unsafe if g not in {f"{c.__module__}.{c.__qualname__}" for c in SAFE_MODULE_CLASSES}]
        if unsafe:
            raise TargetError(f"refusing to load {path}: unpickling it would need {', '.join(unsafe)}, which is not "
                              "on the allowlist of known model classes. Save a state dict "
                              "(torch.save(model.state_dict(), ...)) or a .safetensors file instead.") from None
        raise TargetError(f"{path} could not be read safely: {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise TargetError(f"{path} is not a PyTorch checkpoint: {str(e).splitlines()[0]}") from None
    state = _unwrap(obj, path)
    # a model saved from DataParallel / DDP prefixes every name with "module."
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def check_architecture(task: Task, state: dict[str, torch.Tensor]) -> StagedNet:
    """A fresh model of the task's architecture with `state` loaded; mismatches listed by name."""
    model = build_model(task)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} (file {tuple(state[k].shape)}, {task.arch} {tuple(v.shape)})"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing: {_short(missing)}")
        if unexpected:
            parts.append(f"unexpected: {_short(unexpected)}")
        if shapes:
            parts.append(f"wrong shape: {_short(shapes)}")
        raise TargetError(f"the model does not match task {task.name} ({task.arch}): " + "; ".join(parts))
    model.load_state_dict({k: state[k].to(expected[k].dtype) for k in expected})
    return model.eval()


def _short(items: list[str], limit: int = 12) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def load_target(task: Task, path: str | Path) -> StagedNet:
    """A model file -> a checked model of the task's architecture."""
    return check_architecture(task, load_state_file(path))
