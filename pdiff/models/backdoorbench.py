"""BackdoorBench's attack results (`attack_result.pt`) read safely: the model's state dict taken out, its
`model_name` mapped to an architecture here, its classes and input checked against a task.

BackdoorBench's save_attack_result torch.saves a dict: model_name, num_classes, model (a state dict), data_path,
img_size (H, W, C), clean_data, and bd_train / bd_test, its poisoned datasets' states (numpy index arrays and poison
indicators, dicts keyed by numpy integers). torch.load(weights_only=True) refuses numpy, and numpy's own unpickling
is not safe to admit: a pickled dtype's state sets the dtype's flags, so a file could mark raw bytes as Python
objects. So the four numpy names such a file uses map to the stand-ins below, which take numbers and strings only
and build arrays with np.frombuffer; numpy's setstate never sees the file, and arrays of objects are refused.
"""
from __future__ import annotations

import math
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pdiff.core.config import Task
from pdiff.data.datasets import get_dataset
from pdiff.models.archs import ARCHS
from pdiff.models.tasks import TASKS

# BackdoorBench's model names (utils/aggregate_block/model_trainer_generate.py) -> architectures here
MODEL_NAMES = {"preactresnet18": "preact-resnet18"}

# BackdoorBench names whose models no architecture here runs, and why
NOT_HERE = {"resnet18": "it is torchvision's ResNet-18 with the ImageNet stem (7x7 conv1 and a max-pool), which "
                        "resnet18 here does not run"}


# ---- numpy, read without numpy's unpickling --------------------------------------------------
# a pickled dtype's spec: bool, signed, unsigned, float, complex, bytes, str with a size ('f8', 'U5');
# never objects ('O'), records ('V', fields) or dates
_SPEC = re.compile(r"[biufcSU][0-9]{1,6}")


def _refuse(why: str):
    # one sentence: loading.py shows the unpickler's cause up to its first ". "
    raise pickle.UnpicklingError(why)


class _Dtype:
    """numpy.dtype(spec, align, copy) as pickled, then its state's byte order."""

    dtype: np.dtype | None = None

    def __init__(self, spec=None, align=False, copy=False):
        if not (isinstance(spec, str) and _SPEC.fullmatch(spec)):
            _refuse(f"numpy dtype {str(spec)[:20]!r} is refused: only arrays of numbers and strings are read, never "
                    "of Python objects (reading those could run code)")
        self.dtype = np.dtype(spec)

    def __setstate__(self, state):
        # (version, byte order, subarray, names, fields, elsize, alignment, flags[, metadata]); the flags are
        # not taken from the file: the dtype is rebuilt from its spec
        if not (self.dtype is not None and isinstance(state, tuple) and len(state) in (8, 9) and state[0] in (3, 4)
                and state[1] in ("<", ">", "|", "=") and state[2:5] == (None, None, None)
                and state[5] in (-1, self.dtype.itemsize)):
            _refuse("a numpy dtype with fields, a subarray or an unknown layout is refused")
        if state[1] in "<>":
            self.dtype = self.dtype.newbyteorder(state[1])


class _NDArray:
    """What `numpy.ndarray` means in the file: only the first argument of _reconstruct."""


class _Array:
    """An ndarray as pickled, _reconstruct(ndarray, ...) then (version, shape, dtype, fortran, raw bytes);
    `array` holds it, built with np.frombuffer."""

    array: np.ndarray | None = None

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5 and state[0] == 1 and _built(state[2])):
            _refuse("a numpy array of Python objects or of an unknown layout is refused")
        _, shape, dtype, fortran, raw = state
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
            _refuse(f"a numpy array of shape {str(shape)[:40]} is refused")
        if not (isinstance(raw, bytes) and len(raw) == math.prod(shape) * dtype.dtype.itemsize):
            _refuse("a numpy array whose data is not its shape's size is refused")
        flat = np.frombuffer(raw, dtype.dtype)
        self.array = flat.reshape(shape, order="F" if fortran else "C").copy()


def _built(dtype) -> bool:
    return isinstance(dtype, _Dtype) and dtype.dtype is not None


def _reconstruct(subtype, shape, typecode):
    if subtype is not _NDArray:
        _refuse("a numpy array subclass is refused")
    return _Array()


def _scalar(dtype, raw=None):
    if not (_built(dtype) and isinstance(raw, bytes) and len(raw) == dtype.dtype.itemsize):
        _refuse("a numpy scalar that is not a number or a string is refused")
    return np.frombuffer(raw, dtype.dtype)[0]


# what torch.serialization.safe_globals admits for numpy (numpy 2 pickles numpy._core, numpy 1 numpy.core)
NUMPY_GLOBALS = [(_Dtype, "numpy.dtype"), (_NDArray, "numpy.ndarray"),
                 *[(_reconstruct, f"{m}.multiarray._reconstruct") for m in ("numpy._core", "numpy.core")],
                 *[(_scalar, f"{m}.multiarray.scalar") for m in ("numpy._core", "numpy.core")],
                 _Array]  # BUILD needs the stand-in's own class admitted

NUMPY_NAMES = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in NUMPY_GLOBALS}


# ---- the result ------------------------------------------------------------------------------
def is_result(obj) -> bool:
    """A dict as BackdoorBench's save_attack_result (or save_defense_result) writes it."""
    return isinstance(obj, dict) and "model_name" in obj and "num_classes" in obj


@dataclass(frozen=True)
class Found:
    """The model a result holds, as its own fields say."""
    name: str               # BackdoorBench's model_name
    arch: str               # ours
    classes: int
    channels: int           # the state dict's first convolution's
    size: tuple | None      # img_size's (H, W), when the file has one
    dataset: str | None     # clean_data

    def __str__(self) -> str:
        shape = f"{self.size[0]}x{self.size[1]}x{self.channels}" if self.size else f"{self.channels}-channel"
        data = f" {self.dataset}" if self.dataset else ""
        return f"{self.arch}, {self.classes} classes, {shape}{data} input"


def result_state(result: dict, path: str | Path, task: Task | None = None) -> dict[str, torch.Tensor]:
    """The state dict of a BackdoorBench result, checked against its own model_name and, given one, the task.
    Every refusal is one line (a ValueError)."""
    name = str(result.get("model_name"))
    arch = MODEL_NAMES.get(name)
    if arch is None:
        why = NOT_HERE.get(name, "no architecture here matches it")
        known = ", ".join(f"{k} (as {v})" for k, v in MODEL_NAMES.items())
        raise ValueError(f"{path} is a BackdoorBench result of model {name!r}: {why}; known: {known}")
    state = result.get("model")
    if state is None:
        raise ValueError(f"{path} is a BackdoorBench result ({name}) without a 'model' entry: there are no weights "
                         "to load")
    if not (isinstance(state, dict) and state and all(isinstance(v, torch.Tensor) for v in state.values())):
        raise ValueError(f"{path} is a BackdoorBench result ({name}) whose 'model' entry is a "
                         f"{type(state).__name__}, not a state dict")
    if all(k.startswith("module.") for k in state):  # saved from DataParallel, as BackdoorBench's loader allows
        state = {k[len("module."):]: v for k, v in state.items()}
    found = _found(result, state, name, arch, path)
    _fits_own(found, state, path)
    if task is not None:
        _fits_task(found, task, path)
    return state


def _found(result: dict, state: dict, name: str, arch: str, path) -> Found:
    classes = result.get("num_classes")
    if not (isinstance(classes, (int, np.integer)) and not isinstance(classes, bool) and classes > 0):
        raise ValueError(f"{path} is a BackdoorBench result ({name}) whose num_classes is {classes!r}, not a "
                         "positive whole number")
    size = result.get("img_size")
    if size is not None:
        if not (isinstance(size, (list, tuple)) and len(size) == 3
                and all(isinstance(n, (int, np.integer)) and n > 0 for n in size)):
            raise ValueError(f"{path} is a BackdoorBench result ({name}) whose img_size is {str(size)[:40]}, not "
                             "(height, width, channels)")
        size = (int(size[0]), int(size[1]))
    stem = _stem(arch)
    channels = state[stem].shape[1] if stem in state and state[stem].dim() == 4 else 3
    dataset = result.get("clean_data")
    return Found(name, arch, int(classes), int(channels), size, dataset if isinstance(dataset, str) else None)


def _expected(arch: str, channels: int, classes: int) -> dict[str, torch.Size]:
    """Names and shapes of `arch`'s state dict, built on the meta device (no memory, no random draws)."""
    with torch.device("meta"):
        model = ARCHS[arch](in_channels=channels, num_classes=classes)
    return {k: v.shape for k, v in model.state_dict().items()}


def _stem(arch: str) -> str:
    """The first convolution's weight: its second dimension is the input's channels."""
    return next(k for k, s in _expected(arch, 3, 10).items() if len(s) == 4)


def _fits_own(found: Found, state: dict, path) -> None:
    expected = _expected(found.arch, found.channels, found.classes)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} (file {tuple(state[k].shape)}, {found.arch} {tuple(s)})"
              for k, s in expected.items() if k in state and state[k].shape != s]
    parts = [f"{what}: {_short(items, limit)}" for what, items, limit in
             (("missing", missing, 6), ("unexpected", unexpected, 6), ("wrong shape", shapes, 4)) if items]
    if parts:
        raise ValueError(f"{path} is a BackdoorBench result whose model does not fit its own model_name {found.name} "
                         f"({found.arch}, {found.classes} classes): " + "; ".join(parts))


def _fits_task(found: Found, task: Task, path) -> None:
    spec = get_dataset(task.dataset)
    differ = [what for what, same in (("architecture", found.arch == task.arch),
                                      ("input", found.channels == spec.channels
                                       and found.size in (None, (spec.size, spec.size))),
                                      ("number of classes", found.classes == spec.classes)) if not same]
    if not differ:
        return
    theirs = f"{spec.size}x{spec.size}x{spec.channels} {task.dataset}"
    fitting = [t.name for t in TASKS.values() if t.arch == found.arch and _same_input(found, get_dataset(t.dataset))]
    fitting.sort(key=lambda n: TASKS[n].dataset != found.dataset)  # the task on its own dataset first
    hint = f"; a bundle of task {fitting[0]} takes it" if fitting else ""
    verb = "do" if len(differ) > 1 else "does"
    raise ValueError(f"{path} is a BackdoorBench {found.name} ({found}): the {' and the '.join(differ)} {verb} "
                     f"not fit this bundle's task {task.name} ({task.arch}, "
                     f"{spec.classes} classes, {theirs} input){hint}")


def _same_input(found: Found, spec) -> bool:
    return (found.channels == spec.channels and found.classes == spec.classes
            and found.size in (None, (spec.size, spec.size)))


def _short(items: list[str], limit: int) -> str:
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
