import pytest
import torch

from pdiff.core.params import unflatten
from pdiff.measure import assembly
from pdiff.measure.assembly import Failed, assemble
from pdiff.measure.defences import DefenceFailed


def test_the_controls_are_the_bundle_s_clean_weights_filed_by_kind(tiny_bundle):
    made = assemble(tiny_bundle, ["clean-model", "donor", "average", "clean-layers", "generated", "probe"])
    # the registry's order; no donor (not a budget donor's bundle); generated and the probe are the studies' to make
    assert list(made.layers) == ["average", "clean-layers"] and list(made.whole) == ["clean-model"]
    assert not made.defences
    layers = unflatten(made.layers["clean-layers"], tiny_bundle.layout)
    for name in tiny_bundle.names:
        assert torch.equal(layers[name][0], tiny_bundle.base_state[name].float())
    assert torch.allclose(made.layers["average"][0], tiny_bundle.originals.mean(0))
    assert made.whole["clean-model"] is tiny_bundle.clean_model()[0]


def test_a_defence_that_fails_is_marked_and_the_others_still_run(tiny_bundle, monkeypatch):
    ran, done = [], []

    def fake(name, task, layout, state, budget, generator, settings, device):
        ran.append((name, settings.k))
        if name == "ft":
            raise DefenceFailed("ft: the mask went NaN")
        return assembly.Defended(name, 0.5, state=state)

    monkeypatch.setattr(assembly, "run_defence", fake)
    made = assemble(tiny_bundle, ["clp", "ft", "fp"], tiny_bundle.base_state, done=done.append)
    assert ran == [("ft", 8), ("fp", 8), ("clp", 8)] and done == ["ft", "fp", "clp"]  # K: the bundle's originals
    assert isinstance(made.defences["ft"], Failed) and made.defences["ft"].reason == "ft: the mask went NaN"
    assert list(made.whole) == ["fp", "clp"] and made.defences["fp"].seconds == pytest.approx(0.5)
