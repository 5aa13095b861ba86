"""Every source of parameter sets a report compares, in one registry: its family, whether it depends on the seed,
the clean resources it uses, and its colour in the plots.

A source is what a table row or a plot trace stands for: the generated sets, the originals, a memorisation
baseline, a control (what clean weights alone do), a defence, a method run after a stitch. Its clean resources
are the ledger every transfer row carries (`clean_resources`): the clean images it trained or fitted on, the
images behind the clean model or checkpoints it uses, and how many checkpoints.
"""
from __future__ import annotations

from dataclasses import dataclass

from pdiff.core.registry import Registry
from pdiff.measure.similarity import summary

FAMILIES = ("generated", "control", "baseline", "defence", "stitch", "trunk")
METRICS = ("acc", "asr", "ra", "der")  # the metric lists a report's source block carries (asr, ra, der: backdoored)


@dataclass(frozen=True)
class Source:
    name: str
    family: str                 # one of FAMILIES
    colour: str
    seeded: bool = True         # sampled, drawn or trained anew per seed (False: measured once)
    budget: bool = False        # trains or fits on the clean budget
    model: bool = False         # uses a clean model's weights (the clean base, or a donor)
    checkpoints: bool = False   # uses the clean checkpoints (directly, or through a generator trained on them)
    # what it yields: "layers" (vectors of the bundle's layout, spliced in), "whole" (a whole model's state dict),
    # "probe" (a linear head on the target's own features)
    kind: str = "layers"
    label: str = ""             # a short description for tables and the app

    @property
    def whole(self) -> bool:
        return self.kind == "whole"


SOURCES: Registry[Source] = Registry("source")


def _add(*sources: Source) -> None:
    for s in sources:
        SOURCES.register(s.name, s)


_add(
    Source("generated", "generated", "#d62728", checkpoints=True, label="sampled from the bundle"),
    Source("originals", "control", "#1f77b4", seeded=False, checkpoints=True, label="the clean checkpoints"),
    Source("average", "control", "#000000", seeded=False, checkpoints=True, label="their weight average"),
    Source("clean-layers", "control", "#31a354", seeded=False, model=True, label="the clean model's own layers"),
    Source("clean-model", "control", "#006d2c", seeded=False, model=True, kind="whole",
           label="the clean model as it is"),
    Source("donor", "control", "#74a9cf", seeded=False, model=True, kind="whole",
           label="the budget donor (a clean model trained on the budget only) as it is"),
    Source("probe", "control", "#a1d99b", budget=True, kind="probe",
           label="a linear probe on the target's own features, fitted on the budget"),
    Source("average-16", "baseline", "#393b79", checkpoints=True, label="means of 16 random originals"),
    Source("gaussian", "baseline", "#bcbd22", checkpoints=True, label="a normal per number, fitted on the originals"),
    Source("gaussian_matched", "baseline", "#8c6d31", checkpoints=True,
           label="the per-number Gaussian at the generated sets' novelty (max-IoU matched on validation)"),
    Source("interpolation", "baseline", "#2ca02c", checkpoints=True, label="between two random originals"),
    Source("noise_matched", "baseline", "#17becf", checkpoints=True,
           label="originals plus noise matched to the generated mean accuracy"),
    Source("finetune", "defence", "#ff7f0e", budget=True, label="the target's spliced layers fine-tuned"),
    Source("reinit", "defence", "#e377c2", budget=True, label="the spliced layers re-initialised and trained"),
    Source("ft", "defence", "#fd8d3c", budget=True, kind="whole", label="the whole target fine-tuned"),
    Source("fp", "defence", "#843c39", budget=True, kind="whole", label="fine-pruning"),
    Source("fst", "defence", "#d6616b", budget=True, kind="whole",
           label="feature shift tuning (the head re-initialised and pushed from the victim's)"),
    Source("clp", "defence", "#6b6ecf", seeded=False, kind="whole", label="channel Lipschitz pruning (no data)"),
    Source("anp", "defence", "#9c9ede", budget=True, kind="whole", label="adversarial neuron pruning"),
    Source("stitch+generated", "stitch", "#ff9896", budget=True, model=True, checkpoints=True,
           label="a stitch onto the clean model, then generated layers"),
    Source("stitch+clean-layers", "stitch", "#74c476", budget=True, model=True,
           label="a stitch onto the clean model, then its own layers"),
    Source("stitch+victim-tail", "stitch", "#fdae6b", budget=True, model=True,
           label="the stitch onto the clean model, then the target's own layers"),
    # leave-one-trunk-out: the held-out trunk and the checkpoints of it and of the others
    Source("trunk_as_is", "trunk", "#000000", seeded=False, label="the held-out trunk as it is"),
    Source("own_checkpoints", "trunk", "#1f77b4", seeded=False, label="the held-out trunk's own checkpoints"),
    Source("other_trunks_checkpoints", "trunk", "#9467bd", seeded=False, checkpoints=True,
           label="the training trunks' checkpoints"),
)
# sources named with a parameter: noise_0.05 (sigma), gaussian_t0.5 (temperature)
# (gaussian_top10_t0.5: the Gaussian of the top 10 % of the originals by validation accuracy; before gaussian_t,
# which its name also starts with)
_PREFIXES = {"noise_": Source("noise_", "baseline", "#8c564b", checkpoints=True, label="originals plus noise"),
             "gaussian_top": Source("gaussian_top", "baseline", "#e7ba52", checkpoints=True,
                                    label="the Gaussian of the best originals (by validation accuracy)"),
             "gaussian_t": Source("gaussian_t", "baseline", "#dbdb8d", checkpoints=True,
                                  label="the Gaussian at a temperature")}
_SHADES = {"noise_0.01": "#9467bd", "noise_0.05": "#8c564b", "noise_0.15": "#7f7f7f"}


def source(name: str) -> Source:
    """The registered source `name`, or its parametrised family's (noise_0.05 -> noise_); unknown: ValueError."""
    if name in SOURCES:
        return SOURCES[name]
    for prefix, family in _PREFIXES.items():
        if name.startswith(prefix):
            return family
    return SOURCES.get_or_fail(name)


def colour(name: str) -> str | None:
    """The source's colour in every plot (None for a name no registry knows: plotly picks one)."""
    if name in _SHADES:
        return _SHADES[name]
    try:
        return source(name).colour
    except ValueError:
        return None


def ordered(found) -> list[str]:
    """The names in `found` in the registry's order (a parametrised one beside its family's first member, by
    name), names no registry knows last."""
    rank = {name: i for i, name in enumerate(SOURCES)}
    family = {prefix: min((rank[n] for n, s in SOURCES.items() if s.family == f.family), default=len(rank))
              for prefix, f in _PREFIXES.items()}

    def key(name: str):
        if name in rank:
            return (rank[name], "")
        prefix = next((p for p in _PREFIXES if name.startswith(p)), None)
        return (family[prefix] + 0.5, name) if prefix else (len(rank) + 1, "")
    return sorted(found, key=key)


def names(family: str, kind: str | None = None) -> tuple[str, ...]:
    """The registered sources of a family, in registration order (`kind`: only those of that kind)."""
    return tuple(s.name for s in SOURCES.values() if s.family == family and kind in (None, s.kind))


def entry(name: str, block: dict, ledger: dict) -> dict:
    """A report's block for one source: its family and kind (the registry's), what `block` holds (metric lists and
    anything else the study records), a summary of each metric list and its clean-resources `ledger`."""
    s = source(name)
    return {"family": s.family, "kind": s.kind, **block,
            "summary": {k: summary(block[k]) for k in METRICS if k in block}, "clean_resources": ledger}


def of_family(block: dict[str, dict], *families: str) -> dict[str, dict]:
    """The entries of a report's `sources` block whose family is one of `families`, in the block's order."""
    return {name: e for name, e in block.items() if e["family"] in families}


def clean_resources(name: str, budget_images: int, model_images: int | None, checkpoints: int,
                    conditions=None) -> dict:
    """The ledger of one method: {"images": clean images it trained or fitted on, "model_images": images the clean
    model or checkpoints it uses were trained on (None if it uses none), "checkpoints": clean checkpoints it uses}.
    A conditional bundle's generated sets (and the top-q Gaussians, ranked by the same accuracies) also rest on
    the clean images their condition was measured on (`conditions.clean_images`): "condition_images"."""
    s = source(name)
    out = {"images": budget_images if s.budget else 0,
           "model_images": model_images if (s.model or s.checkpoints) else None,
           "checkpoints": checkpoints if s.checkpoints else 0}
    if conditions is not None and (name in ("generated", "stitch+generated") or name.startswith("gaussian_top")):
        out["condition_images"] = conditions.clean_images
    return out
