"""Model files loaded safely: safetensors, .pth state dicts, allowlisted whole modules, BackdoorBench results;
checked against a task.

Nothing is unpickled except through `torch.load(weights_only=True)`; a whole pickled module
is accepted only when every class in it is on SAFE_MODULE_CLASSES, and then only its state
dict is kept and copied into a freshly built model of the task's architecture. numpy arrays of
numbers and strings (what BackdoorBench's attack_result.pt holds beside the model) are read by
the stand-ins in models/backdoorbench.py, never by numpy's unpickling.
"""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from pdiff.core.config import Task
from pdiff.models import backdoorbench
from pdiff.models.archs import SAFE_MODULE_CLASSES
from pdiff.models.statedicts import looks_like, translate
from pdiff.models.tasks import build_model


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


# torch.save's legacy format: a pickle (protocol 2) whose first object is torch's magic number
_LEGACY_MAGIC = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8"


# first bytes of files people upload by mistake -> what to call them
_MAGIC = [(b"\x89PNG\r\n\x1a\n", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"), (b"\x89HDF\r\n\x1a\n", "an HDF5 file (Keras?)"),
          (b"\x93NUMPY", "a NumPy array (.npy)"), (b"\x7fELF", "an executable")]


def _sniff(path: Path) -> str:
    """'safetensors' or 'torch' from the file's first bytes, else what the file looks like instead."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "an empty file"
    if head.startswith(b"PK\x03\x04"):  # torch.save writes a zip with <name>/data.pkl in it
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError):
            return "torch"  # a damaged archive: torch.load says what is wrong with it
        if any(n.rsplit("/", 1)[-1] == "data.pkl" for n in names):
            return "torch"
        return f"a zip archive that is not a PyTorch checkpoint (it holds {_short(names, 3)})"
    if head.startswith(_LEGACY_MAGIC):
        return "torch"
    if head[:1] == b"\x80":
        return "a Python pickle that is not a PyTorch checkpoint"
    if head[8:9] == b"{":  # safetensors: an 8-byte header length, then the JSON header
        return "safetensors"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:  # a character cut at the 512th byte is still text
        text = head[:e.start].decode("utf-8") if e.start > len(head) - 4 else ""
    if text and all(c.isprintable() or c in "\t\r\n" for c in text):
        if text.startswith("version https://git-lfs"):
            return "a Git LFS pointer, not the file itself (git lfs pull fetches it)"
        first = text.strip().splitlines()[0] if text.strip() else ""
        return f"text ({first[:40]!r})" if first else "a file of blank text"
    return f"binary data of an unknown kind (first bytes {head[:8].hex(' ')})"


def load_state_file(path: str | Path, task: Task | None = None) -> dict[str, torch.Tensor]:
    """Read a model file into a plain state dict, refusing anything that could run code or is not finite.

    What the file holds decides how it is read, whatever its suffix. A BackdoorBench result is checked
    against its own model_name and, given one, the task."""
    path = Path(path)
    if not path.is_file():
        raise TargetError(f"no model file at {path}")
    kind = _sniff(path)
    if kind not in ("torch", "safetensors"):
        raise TargetError(f"{path} is not a model checkpoint: expected a safetensors file or a PyTorch state dict "
                          f"(torch.save), found {kind}")
    state = _read_safetensors(path) if kind == "safetensors" else _read_torch(path, task)
    check_finite(state, path)
    return state


def check_finite(state: dict[str, torch.Tensor], path: str | Path) -> None:
    """Refuse NaN or inf in any floating parameter or buffer: no sample spliced into it could be measured."""
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in state.items() if v.is_floating_point() or v.is_complex()}
    bad = [f"{k!r} has {c} NaN/inf values of {state[k].numel()}" for k, c in bad.items() if c]
    if bad:
        raise TargetError(f"{path} is not a usable target: tensor {_short(bad, 4)}")


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(path)
    except (SafetensorError, OSError) as e:
        raise TargetError(f"{path} is not a readable safetensors file: {e}") from None


def _read_torch(path: Path, task: Task | None = None) -> dict[str, torch.Tensor]:
    try:
        # an open file, not the path: torch.load would hand any *.safetensors path to safetensors
        with (torch.serialization.safe_globals(SAFE_MODULE_CLASSES + backdoorbench.NUMPY_GLOBALS),
              open(path, "rb") as f):
            obj = torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        try:
            unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # not even a readable checkpoint archive
            unsafe = []
        allowed = {f"{c.__module__}.{c.__qualname__}" for c in SAFE_MODULE_CLASSES} | backdoorbench.NUMPY_NAMES
        unsafe = [g for g in unsafe if g not in allowed]
        if unsafe:
            raise TargetError(f"refusing to load {path}: unpickling it would need {', '.join(unsafe)}, which is not "
                              "on the allowlist of known model classes. Save a state dict "
                              "(torch.save(model.state_dict(), ...)) or a .safetensors file instead.") from None
        # torch's message opens with advice to drop weights_only; the cause follows its marker
        cause = str(e).rpartition("WeightsUnpickler error:")[2].strip()
        cause = cause.splitlines()[0].split(". ")[0] if cause else "an unreadable pickle"
        raise TargetError(f"{path} could not be read safely (torch.load with weights_only=True): {cause}") from None
    except Exception as e:  # a damaged file makes the unpickler fail in many ways (EOFError, IndexError, ...)
        first = (str(e).splitlines() or [""])[0]
        raise TargetError(f"{path} is not a readable PyTorch checkpoint: {type(e).__name__}: {first}") from None
    if backdoorbench.is_result(obj):
        try:
            return backdoorbench.result_state(obj, path, task)
        except ValueError as e:
            raise TargetError(str(e)) from None
    state = _unwrap(obj, path)
    # a model saved from DataParallel / DDP prefixes every name with "module."
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def check_architecture(task: Task, state: dict[str, torch.Tensor]) -> nn.Module:
    """A fresh model of the task's architecture with `state` loaded; the first mismatches listed by name.

    A state dict of a known foreign family (torchvision's ResNet-18 for resnet18) is renamed first."""
    model = build_model(task)
    expected = model.state_dict()
    state, family = translate(state, task.arch)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} (file {tuple(state[k].shape)}, {task.arch} {tuple(v.shape)})"
              for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing: {_short(missing, 6)}")
        if unexpected:
            parts.append(f"unexpected: {_short(unexpected, 6)}")
        if shapes:
            parts.append(f"wrong shape: {_short(shapes, 4)}")
        what = f" (read as a {family.name}, renamed to {task.arch}'s names)" if family else ""
        other = None if family else looks_like(state, task.arch)
        hint = (f"; {family.hint}" if family and any(s.startswith(family.hint_when + " ") for s in shapes) else
                f"; the file has the names of architecture {other}: use a bundle of a task with that architecture"
                if other else "")
        raise TargetError(f"the model{what} does not match task {task.name} ({task.arch}): " + "; ".join(parts) + hint)
    model.load_state_dict({k: state[k].to(expected[k].dtype) for k in expected})
    return model.eval()


def _short(items: list[str], limit: int = 12) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def load_target(task: Task, path: str | Path) -> nn.Module:
    """A model file -> a checked model of the task's architecture."""
    return check_architecture(task, load_state_file(path, task))
