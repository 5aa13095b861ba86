"""Targets by name: the bundle's clean model, its victims, or a model file, each with the trigger it is
scored against (its own report's, one beside the file, the user's, or an assumed one, always said)."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from pdiff.collection.folder import PLAIN_VICTIM
from pdiff.data.triggers import NO_TRIGGER, Trigger, load_trigger
from pdiff.generator.bundle import Bundle, BundleError
from pdiff.models.loading import load_target


# ---- targets by name ---------------------------------------------------------------------
FROM_REPORT = "from the victim report"

FROM_SIBLING = "from the victim report beside the file"

ASSUMED = "assumed (no victim report beside the file)"

GIVEN = "given by the user"

@dataclass(frozen=True, eq=False)
class Target:
    """A model the generated layers go into, typed once at the edge (resolve_target) and passed down as it is."""
    name: str                      # "clean", a victim's name, or the model file's name
    state: dict[str, torch.Tensor]
    trigger: Trigger | None        # None: backdoor metrics do not apply
    trigger_source: str | None = None  # where the trigger came from (FROM_REPORT, ASSUMED, ...); None without one

    @cached_property
    def key(self) -> str:
        """A stable key: SHA-256 of the weights (names, dtypes, shapes, bytes) and of the trigger's spec. Two targets
        with the same key measure the same, whatever they were called or loaded from (the engine cache's key)."""
        h = hashlib.sha256()
        for name in sorted(self.state):
            value = self.state[name].detach().to("cpu").contiguous()
            h.update(f"{name}|{value.dtype}|{tuple(value.shape)}|".encode())
            h.update(value.reshape(-1).view(torch.uint8).numpy().tobytes())
        h.update(json.dumps(self.trigger.to_dict() if self.trigger else None, sort_keys=True).encode())
        return h.hexdigest()


def resolve_target(bundle: Bundle, target: str | Path | Target | nn.Module | dict,
                   trigger: Trigger | str | None = None) -> Target:
    """'clean', 'victim' (alias 'scratch'), a named victim of the bundle ('finetuned-blended', or just
    'finetuned' for its first fine-tuned one), or else a model file, loaded safely; a model in memory (a
    module or a state dict) is a target with no trigger unless one is given.

    trigger: None takes the victim's own (its report, or one beside the file) or else assumes the bundle's
    BadNets one, and says so in `trigger_source`; a Trigger, a preset's name, a spec file or 'none' is the
    user's choice and wins."""
    if isinstance(target, Target):
        return target
    if isinstance(target, (nn.Module, dict)):
        state = target.state_dict() if isinstance(target, nn.Module) else target
        found = Target(type(target).__name__ if isinstance(target, nn.Module) else "model", state, None)
    else:
        found = _resolve(bundle, str(target))
    if trigger is None:
        return found
    chosen = load_trigger(trigger) if isinstance(trigger, (str, Path)) else trigger
    if chosen == NO_TRIGGER:
        return Target(found.name, found.state, None, GIVEN)
    return Target(found.name, found.state, chosen.check(bundle.task.dataset), GIVEN)

def _resolve(bundle: Bundle, target: str) -> Target:
    """A target by name or file, with the trigger of its own report (or the assumed one)."""
    if target == "clean":
        return Target("clean", bundle.base_state, None)
    if target == "victim" and bundle.victim_state is None:
        raise BundleError("this bundle ships no victim model; choose the clean target or upload a model")
    name = named_victim(bundle, "scratch-badnets" if target == "victim" else target)
    if name is not None:
        return Target("victim" if name == PLAIN_VICTIM else name, bundle.victims[name],
                      Trigger.from_dict(bundle.victim_report(name)["trigger"]).check(bundle.task.dataset), FROM_REPORT)
    if "/" not in target and "." not in target and not Path(target).exists():
        known = ", ".join(["clean", *target_names(bundle)])
        raise BundleError(f"no target {target!r} in this bundle (it has: {known}); or give a model file")
    model = load_target(bundle.task, target)
    report = sibling_report(target)
    if report is not None:
        theirs = report.get("task", {})
        if (theirs.get("dataset"), theirs.get("arch")) not in ((None, None), (bundle.task.dataset, bundle.task.arch)):
            raise BundleError(f"{Path(target).name} was trained for {theirs.get('arch')} on {theirs.get('dataset')} (its "
                              f"report says), the bundle's task is {bundle.task.arch} on {bundle.task.dataset}")
        trigger = Trigger.from_dict(report["trigger"]).check(bundle.task.dataset)
        return Target(Path(target).name, model.state_dict(), trigger, FROM_SIBLING)
    return Target(Path(target).name, model.state_dict(), assumed_trigger(bundle), ASSUMED)

def assumed_trigger(bundle: Bundle) -> Trigger:
    """The trigger an uploaded model is scored against when nothing names one: the bundle's scratch
    victim's (BadNets, target 0, for the shipped bundles), else the BadNets preset."""
    plain = bundle.info.victim_reports.get(PLAIN_VICTIM) or {}
    return Trigger.from_dict(plain["trigger"]) if plain.get("trigger") else Trigger()

def target_names(bundle: Bundle) -> list[str]:
    """The bundle's victims as targets are named: the scratch BadNets one is `victim`."""
    return ["victim" if n == PLAIN_VICTIM else n for n in bundle.victims]

def named_victim(bundle: Bundle, target: str) -> str | None:
    """The bundle victim a name means: an exact name, or a kind ('finetuned') -> its BadNets one first."""
    if target in bundle.victims:
        return target
    kind = sorted((n for n in bundle.victims if n.startswith(f"{target}-")), key=lambda n: not n.endswith("-badnets"))
    return kind[0] if kind else None

def sibling_report(model_path: str | Path) -> dict | None:
    """The victim report beside a model file (victim-*.json, written by `collect --trigger`), if there is one."""
    try:
        meta = json.loads(Path(model_path).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return None
    return meta if meta.get("format") == "pdiff-victim" and isinstance(meta.get("trigger"), dict) else None


def sibling_trigger(model_path: str | Path) -> Trigger | None:
    """The trigger recorded in the victim report beside the model file, if there is one."""
    report = sibling_report(model_path)
    return Trigger.from_dict(report["trigger"]) if report else None
