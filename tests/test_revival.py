"""The revival attack, the probe and ANP on the tiny real victim: each does what it says and nothing else."""
import pytest
import torch

from pdiff.core.settings import DefenceSettings
from pdiff.data.plan import draw_budget
from pdiff.data.triggers import Trigger, apply_trigger
from pdiff.measure.defences import DefenceFailed, anp_masks, model_defence, prune_by_mask
from pdiff.measure.engine import TargetEngine
from pdiff.measure.probe import probe_for
from pdiff.measure.revival import CALIBRATION_LADDER, REVIVAL, Composed, calibrate, measured, revival_batch, revive, revived
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
    again = revive(model, budget, victim.trigger, 0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the repaired model is untouched
    assert not torch.equal(again.state_dict()["conv1.weight"], before["conv1.weight"])  # every layer trains
    out = revived([model, model], budget, small_test, victim.trigger, 0)
    assert set(out) == {"acc", "asr", "ra"} and len(out["asr"]) == 2
    assert out["asr"][0] == out["asr"][1] and out["acc"][0] == out["acc"][1]  # every model meets the same attack
    shorter = revive(model, budget, victim.trigger, 0, steps=3)
    assert not torch.equal(shorter.state_dict()["conv1.weight"], again.state_dict()["conv1.weight"])


def test_calibration_picks_the_fewest_ladder_steps_that_bring_the_repaired_victim_back(tiny_bundle, budget,
                                                                                      small_test):
    victim = resolve_target(tiny_bundle, "victim")
    repaired = check_architecture(tiny_bundle.task, tiny_bundle.base_state)  # never held it: stands in for a repair
    c = calibrate(repaired, repaired, budget, small_test, victim.trigger, 0)
    curve = c["victim_asr_by_steps"]
    assert list(curve) == list(CALIBRATION_LADDER[:len(curve)]) and c["steps"] in CALIBRATION_LADDER
    if c["reached"]:  # the first rung at the target, none before it
        assert curve[c["steps"]] >= c["target_asr"] and all(v < c["target_asr"] for k, v in curve.items()
                                                            if k < c["steps"])
    else:
        assert c["steps"] == CALIBRATION_LADDER[-1] and max(curve.values()) < c["target_asr"]
    # the floor is the same attack on the never-held model: here the same model, so the same ASR as the curve's end
    assert c["floor_asr"] == pytest.approx(measured(revive(repaired, budget, victim.trigger, 0, c["steps"]),
                                                    small_test.subset(c["validation_images"]), victim.trigger)["asr"])


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


def test_anp_prunes_bn_neurons_by_the_budget_rule_and_changes_nothing_else(tiny_bundle, budget):
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
    rule = info["prune_rule"]
    assert rule["name"] == "budget-accuracy" and info["pruned"] == sum(len(i) for i in info["pruned_neurons"].values())
    assert (rule["budget_acc_before"] - rule["budget_acc_pruned"]) / rule["budget_acc_before"] <= rule["acc_ratio"]


def test_the_budget_rule_stops_before_the_neuron_that_costs_too_much(tiny_bundle, budget):
    task = tiny_bundle.task
    masks = anp_masks(check_architecture(task, tiny_bundle.victim_state), budget, torch.Generator().manual_seed(0),
                      30, "cpu")
    model = check_architecture(task, tiny_bundle.victim_state)
    pruned, rule = prune_by_mask(model, masks, budget, None, "cpu")
    order = sorted((v.item(), name, i) for name, m in masks.items() for i, v in enumerate(m))
    assert pruned == [(name, i) for _, name, i in order[:len(pruned)]]  # in increasing order of the mask
    if len(pruned) < int(len(order) * rule["max_ratio"]):  # stopped by the rule: one more would cost over 10 %
        _, name, i = order[len(pruned)]
        model.get_submodule(name).weight.data[i] = 0.0
        acc = measured(model, budget, resolve_target(tiny_bundle, "victim").trigger)["acc"]
        assert (rule["budget_acc_before"] - acc) / rule["budget_acc_before"] > rule["acc_ratio"]


def test_anp_with_a_threshold_prunes_below_it_and_refuses_to_prune_everything(tiny_bundle, budget):
    task = tiny_bundle.task
    masks = anp_masks(check_architecture(task, tiny_bundle.victim_state), budget, torch.Generator().manual_seed(0),
                      30, "cpu")
    pruned, rule = prune_by_mask(check_architecture(task, tiny_bundle.victim_state), masks, budget, 0.5, "cpu")
    assert rule == {"name": "threshold", "threshold": 0.5}
    assert sorted(pruned) == sorted((n, i) for n, m in masks.items() for i, v in enumerate(m) if v < 0.5)
    with pytest.raises(DefenceFailed, match="would prune all 224 neurons"):
        prune_by_mask(check_architecture(task, tiny_bundle.victim_state), {n: m * 0 for n, m in masks.items()},
                      budget, 0.5, "cpu")


def test_anp_masks_are_the_same_for_the_same_seed_and_leave_the_model_as_it_was(tiny_bundle, budget):
    task = tiny_bundle.task
    model = check_architecture(task, tiny_bundle.victim_state)
    a = anp_masks(model, budget, torch.Generator().manual_seed(3), 10, "cpu")
    b = anp_masks(check_architecture(task, tiny_bundle.victim_state), budget, torch.Generator().manual_seed(3), 10,
                  "cpu")
    assert all(torch.equal(a[k], b[k]) for k in a) and all(((m >= 0) & (m <= 1)).all() for m in a.values())
    assert any((m < 1).any() for m in a.values())  # the noise moved some masks
    assert all(torch.equal(v, tiny_bundle.victim_state[k]) for k, v in model.state_dict().items())
    assert "forward" not in vars(model.bn1)  # the noisy forward is gone


def test_fst_reinitialises_the_head_keeps_its_norm_and_moves_it_from_the_victims(tiny_bundle, budget):
    victim = tiny_bundle.victim_state
    state, info = model_defence("fst", tiny_bundle.task, victim, budget, torch.Generator().manual_seed(0),
                                DefenceSettings(epochs=1))
    assert state["linear.weight"].norm().item() == pytest.approx(victim["linear.weight"].norm().item(), rel=1e-5)
    assert info["head_cosine_to_original"] < 0.5  # a fresh head pushed away, not the victim's tuned
    assert not torch.equal(state["conv1.weight"], victim["conv1.weight"])  # every layer tunes
    assert info["alpha"] == 0.2 and info["epochs"] == 1
