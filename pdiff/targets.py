"""Targets: load model files safely (safetensors, .pth state dicts, allowlisted whole modules), and
resolve a target by name (clean, a bundle's victims, a file) with the trigger it is scored against.

Nothing is unpickled except through `torch.load(weights_only=True)`; a whole pickled module
is accepted only when every class in it is on SAFE_MODULE_CLASSES, and then only its state
dict is kept and copied into a freshly built model of the task's architecture.
"""
from __future__ import annotations

import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from pdiff.archs import SAFE_MODULE_CLASSES, StagedNet
from pdiff.backdoor import Trigger
from pdiff.bundle import Bundle, BundleError
from pdiff.collection import PLAIN_VICTIM
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


# ---- targets by name ---------------------------------------------------------------------
@dataclass
class Target:
    name: str                      # "clean", a victim's name, or the model file's name
    state: dict[str, torch.Tensor]
    trigger: Trigger | None        # None: backdoor metrics do not apply


def resolve_target(bundle: Bundle, target: str | Path | Target) -> Target:
    """'clean', 'victim' (alias 'scratch'), a named victim of the bundle ('finetuned-blended', or just
    'finetuned' for its first fine-tuned one), or else a model file, loaded safely."""
    if isinstance(target, Target):
        return target
    target = str(target)
    if target == "clean":
        return Target("clean", bundle.base_state, None)
    if target == "victim" and bundle.victim_state is None:
        raise BundleError("this bundle ships no victim model; choose the clean target or upload a model")
    name = named_victim(bundle, "scratch-badnets" if target == "victim" else target)
    if name is not None:
        return Target("victim" if name == PLAIN_VICTIM else name, bundle.victims[name],
                      Trigger.from_dict(bundle.victim_report(name)["trigger"]))
    if "/" not in target and "." not in target and not Path(target).exists():
        known = ", ".join(["clean", *target_names(bundle)])
        raise BundleError(f"no target {target!r} in this bundle (it has: {known}); or give a model file")
    plain = bundle.meta.get("victim") or {}
    default = Trigger.from_dict(plain["trigger"]) if plain.get("trigger") else Trigger()
    model = load_target(bundle.task, target)
    return Target(Path(target).name, model.state_dict(), sibling_trigger(target) or default)


def target_names(bundle: Bundle) -> list[str]:
    """The bundle's victims as targets are named: the scratch BadNets one is `victim`."""
    return ["victim" if n == PLAIN_VICTIM else n for n in bundle.victims]


def named_victim(bundle: Bundle, target: str) -> str | None:
    """The bundle victim a name means: an exact name, or a kind ('finetuned') -> its BadNets one first."""
    if target in bundle.victims:
        return target
    kind = sorted((n for n in bundle.victims if n.startswith(f"{target}-")), key=lambda n: not n.endswith("-badnets"))
    return kind[0] if kind else None


def sibling_trigger(model_path: str | Path) -> Trigger | None:
    """The trigger recorded in a victim report beside the model file (victim-*.json), if there is one."""
    try:
        meta = json.loads(Path(model_path).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") == "pdiff-victim" and isinstance(meta.get("trigger"), dict):
        return Trigger.from_dict(meta["trigger"])
    return None
