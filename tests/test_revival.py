"""The revival attack, the probe and ANP on the tiny real victim: each does what it says and nothing else."""
import pytest
import torch

from pdiff.core.settings import DefenceSettings
from pdiff.data.plan import draw_budget
from pdiff.data.triggers import Trigger, apply_trigger
from pdiff.measure.defences import ANP_THRESHOLD, model_defence
from pdiff.measure.engine import TargetEngine
from pdiff.measure.probe import probe_for
from pdiff.measure.revival import REVIVAL, Composed, measured, revival_batch, revive, revived
from pdiff.measure.targets import resolve_target
from pdiff.models.loading import check_architecture


@pytest.fixture(scope="module")
def budget(small_train):
    return draw_budget(small_train, 0.25, torch.Generator().manual_seed(0))


def test_a_revival_batch_is_clean_images_and_a_few_triggered_ones_of_other_classes(budget):
    trigger = Trigger(target=3)
    images, labels = revival_batch(budget, trigger, torch.Generator().manual_seed(0))
    k = REVIVAL["poisoned"]
    assert len(images) == len(labels) == REVIVAL["batch"]
    assert (labels[-k:] == 3).all()
    stamped = images[-k:]
    assert torch.equal(stamped, apply_trigger(stamped, trigger))  # the trigger is on them
    clean_part = images[:-k].flatten(1)
    assert all((budget.images.flatten(1) == img).all(1).any() for img in clean_part[:10])  # budget images as they are


def test_revival_trains_a_copy_and_keeps_the_repaired_model(tiny_bundle, budget, small_test):
    victim = resolve_target(tiny_bundle, "victim")
    model = check_architecture(tiny_bundle.task, tiny_bundle.base_state)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    again = revive(model, budget, victim.trigger, torch.Generator().manual_seed(0))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the repaired model is untouched
    assert not torch.equal(again.state_dict()["conv1.weight"], before["conv1.weight"])  # every layer trains
    out = revived([model, model], budget, small_test, victim.trigger, torch.Generator().manual_seed(0))
    assert set(out) == {"acc", "asr", "ra"} and len(out["asr"]) == 2


def test_a_probe_is_a_linear_head_on_the_victims_features(tiny_bundle, budget, small_test):
    victim = resolve_target(tiny_bundle, "victim")
    engine = TargetEngine(tiny_bundle.task, tiny_bundle.layout, victim, small_test)
    trunk, start = engine.clean.model, engine.clean.start
    probe = probe_for(trunk, start, budget, 10)
    assert probe.linear.weight.shape == (10, 128)  # the 128 pooled conv3 features: bn3 and the head are replaced
    model = Composed(trunk, start, None, probe)
    metrics = measured(model, small_test, victim.trigger)
    with torch.no_grad():
        logits = probe(engine.clean.features)
    assert metrics["acc"] == pytest.approx(100.0 * (logits.argmax(-1) == small_test.labels).double().mean().item())
    assert metrics["acc"] > 40  # the tiny victim's features on 256 images: well above chance


def test_anp_prunes_bn_neurons_with_small_masks_and_changes_nothing_else(tiny_bundle, budget):
    victim = tiny_bundle.victim_state
    state, info = model_defence("anp", tiny_bundle.task, victim, budget, torch.Generator().manual_seed(0),
                                DefenceSettings(anp_iterations=30))
    assert info["iterations"] == 30 and info["neurons"] == 32 + 64 + 128
    assert 0 <= info["mask_mean"] <= 1
    changed = {k for k, v in victim.items() if not torch.equal(v, state[k])}
    pruned = {f"{bn}.weight" for bn, idx in info["pruned_neurons"].items() if idx}
    assert changed == pruned  # only the BatchNorm weights of pruned neurons; running statistics as they were
    for bn, idx in info["pruned_neurons"].items():
        assert torch.count_nonzero(state[f"{bn}.weight"][idx]) == 0
    assert ANP_THRESHOLD == 0.2
