"""The Run form, typed once: what one press of Run (or one API call to /generate) asks for.

The form's fields are the API's parameters (`FORM`, in order, with their defaults); `RunRequest.from_form` turns
them into the objects everything below takes: a Target with its trigger, a SamplingSpec, EvalSettings. The app's
sampling and defences differ from the CLI's on purpose (`APP_SAMPLING`, `APP_DEFENCES`); every report records the
settings it ran with.
"""
from __future__ import annotations

from dataclasses import dataclass

from pdiff.core.settings import Condition, DefenceSettings, EvalSettings, SamplingSpec
from pdiff.core.splice import ALL_LAYERS
from pdiff.data.triggers import trigger_from_fields
from pdiff.generator.bundle import Bundle
from pdiff.measure.targets import Target, resolve_target, target_names

# a browser waits for the answer: DDIM-50 and 100 sets, where the CLI draws 200 with the full DDPM chain
APP_SAMPLING = SamplingSpec(n=100, sampler="ddim", steps=50)
# ANP's mask at 200 steps, pruned by the same budget-accuracy rule as the CLI's: BackdoorBench's 2,000 (the CLI's
# default and the threat-model tables') keep a browser waiting about ten minutes on a CPU
APP_DEFENCES = DefenceSettings(anp_iterations=200)
# the controls (baselines, matched noise and Gaussian) drawn from one seed whatever the run's: measured once per
# bundle and target and kept (measure.store), so a run with a new seed only measures what depends on it. Seed 0's
# draws are the CLI's for seed 0
APP_CONTROLS_SEED = 0
MAX_N = 500
# a light event (a field shown or hidden, a view redrawn from the page's report): not in the API, and never waiting
# behind (or refused by) a full queue of runs
LIGHT = {"api_visibility": "private", "queue": False}
UPLOAD = "upload"
# the form's fields in the API's parameter order, and their defaults (victim_file: the uploaded file, if any)
FORM = {"bundle": "", "target": "clean", "victim_file": None, "trigger_kind": "assumed", "trigger_target": 0,
        "patch_size": 3, "patch_corner": "bottom-right", "blend_opacity": 0.1, "blend_seed": 0,
        "layers": [ALL_LAYERS], "n": APP_SAMPLING.n, "sampler": APP_SAMPLING.sampler, "steps": APP_SAMPLING.steps,
        "seed": APP_SAMPLING.seed, "defences": False, "condition": "default", "acc": None, "guidance": ""}
TRIGGER_FIELDS = ("trigger_kind", "trigger_target", "patch_size", "patch_corner", "blend_opacity", "blend_seed")


def condition_choices(bundle: Bundle) -> list[str]:
    """What the bundle can be asked for: default (what it is for) and none; an accuracy-conditional bundle also
    acc=best and acc (the value of the accuracy slider); a trunk-conditional one trunk=target."""
    c = bundle.conditions
    if c is None:
        return ["default"]
    return ["default", "none", *(("acc=best", "acc") if c.kind == "acc" else ("trunk=target",))]


def _condition(form: dict, bundle: Bundle) -> Condition:
    """The form's condition, parsed here where the request enters: `acc` is acc=<the slider's value>."""
    choice = form["condition"] or "default"
    if choice not in condition_choices(bundle):
        raise ValueError(f"condition {choice!r}: this bundle offers {', '.join(condition_choices(bundle))}")
    if choice != "acc":
        return Condition.parse(choice)
    try:
        return Condition("acc", f"{float(form['acc']):g}")
    except (TypeError, ValueError):
        raise ValueError(f"condition acc needs an accuracy (percent), got {form['acc']!r}") from None


def _guidance(value) -> float | None:
    """The guidance field: blank (None) for the bundle's own scale, else a number."""
    if value is None or str(value).strip() == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"guidance must be a number (or blank: the bundle's own scale), got {value!r}") from None


def target_choices(bundle: Bundle) -> list[str]:
    """clean, the bundle's victims (the scratch BadNets one is `victim`), upload."""
    return ["clean", *target_names(bundle), UPLOAD]


def _whole(form: dict, name: str) -> int:
    try:
        value = float(form[name])
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a whole number, got {form[name]!r}") from None
    if value != int(value):
        raise ValueError(f"{name} must be a whole number, got {form[name]!r}")
    return int(value)


@dataclass(frozen=True)
class RunRequest:
    bundle: Bundle
    target: Target
    sampling: SamplingSpec
    settings: EvalSettings

    @classmethod
    def from_form(cls, form: dict, bundle: Bundle) -> "RunRequest":
        """The form's values (any left out take FORM's defaults) for `bundle`, already loaded from form["bundle"];
        bad values raise ValueError naming the field."""
        form = {**FORM, **{k: v for k, v in form.items() if k in FORM}}
        n = _whole(form, "n")
        if not 1 <= n <= MAX_N:
            raise ValueError(f"N must be between 1 and {MAX_N}, got {n}")
        guidance = _guidance(form["guidance"])
        sampling = SamplingSpec(n=n, sampler=form["sampler"], steps=_whole(form, "steps"), seed=_whole(form, "seed"),
                                condition=_condition(form, bundle), guidance=guidance)
        layers = form["layers"]
        if layers is not None and len(layers) == 0:
            raise ValueError("choose at least one layer to splice")
        settings = EvalSettings(layers=tuple(layers or ()), defences=APP_DEFENCES if form["defences"] else None,
                                controls_seed=APP_CONTROLS_SEED)
        return cls(bundle, _target(form, bundle), sampling, settings)


def _target(form: dict, bundle: Bundle) -> Target:
    """An upload's file with the trigger of its fields, or a named target of the bundle with its own trigger."""
    choice = form["target"]
    if choice == UPLOAD:
        upload = form["victim_file"]
        if not upload:
            raise ValueError("target is 'upload' but no model file was uploaded")
        path = upload if isinstance(upload, str) else upload.name
        return resolve_target(bundle, path, trigger_from_fields(*(form[k] for k in TRIGGER_FIELDS)))
    choices = target_choices(bundle)
    if choice not in choices:
        raise ValueError(f"unknown target {choice!r}; this bundle offers {', '.join(choices)}")
    return resolve_target(bundle, choice)
