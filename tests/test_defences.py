"""The defences on a tiny real victim: each changes what it should and nothing else."""
import pytest
import torch

from pdiff.core.settings import DefenceSettings
from pdiff.data.plan import draw_budget
from pdiff.measure.defences import (batchnorms_after, layer_defence, model_defence, reestimate_bn, reinit_,
                                    run_defence)
from pdiff.models.staged import predict
from pdiff.core.params import own_vector, unflatten
from pdiff.models.loading import check_architecture

from helpers import with_recipe


@pytest.fixture(scope="module")
def budget(small_train):
    return draw_budget(small_train, 0.25, torch.Generator().manual_seed(0))


def _changed(before: dict, after: dict) -> set[str]:
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


def test_reinit_touches_only_the_named_parameters(tiny_bundle):
    model = check_architecture(tiny_bundle.task, tiny_bundle.victim_state)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reinit_(model, tiny_bundle.names, torch.Generator().manual_seed(0))
    changed = _changed(before, model.state_dict())
    assert changed == set(tiny_bundle.names)  # the trunk and every running statistic stay the victim's
    assert torch.equal(model.state_dict()["bn3.weight"], torch.ones(128))


def test_batchnorm_statistics_after_a_reinitialised_layer_are_re_estimated(tiny_bundle, budget):
    assert batchnorms_after(check_architecture(tiny_bundle.task, tiny_bundle.victim_state), tiny_bundle.names) == []
    model = check_architecture(tiny_bundle.task, tiny_bundle.victim_state)
    assert batchnorms_after(model, ["conv3.weight", "bn3.weight", "linear.weight"]) == ["bn3"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reestimate_bn(model, budget, ["bn3"], batch=1024)  # one batch: the statistics are that batch's
    assert _changed(before, model.state_dict()) == {"bn3.running_mean", "bn3.running_var", "bn3.num_batches_tracked"}
    x = predict(model, budget.normalized(), 0, model.stage_of("bn3.weight")).flatten(1)
    assert torch.allclose(model.bn3.running_mean, x.mean(0), atol=1e-5)
    assert torch.allclose(model.bn3.running_var, x.var(0, unbiased=True), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["finetune", "reinit"])
def test_layer_defences_train_only_the_spliced_layers(tiny_bundle, budget, name):
    bundle = with_recipe(tiny_bundle, save_every=3)
    victim = bundle.victim_state
    vectors = layer_defence(name, bundle.task, bundle.layout, victim, budget, torch.Generator().manual_seed(0), k=4)
    assert vectors.shape == (4, own_vector(victim, bundle.layout).shape[1])  # the spliced layers and nothing else
    final = {k: v[-1] for k, v in unflatten(vectors, bundle.layout).items()}
    assert all(not torch.equal(final[k], victim[k]) for k in bundle.names)
    assert not torch.equal(vectors[0], vectors[-1])  # a run: the checkpoints move


def test_ft_touches_every_layer(tiny_bundle, budget):
    victim = tiny_bundle.victim_state
    state, info = model_defence("ft", tiny_bundle.task, victim, budget, torch.Generator().manual_seed(0),
                                DefenceSettings(epochs=1))
    assert info == {"epochs": 1}
    floats = {k for k, v in victim.items() if v.is_floating_point()}
    assert _changed(victim, state) >= floats  # every weight and every BatchNorm statistic


def test_fp_prunes_dormant_channels_and_keeps_them_zero(tiny_bundle, budget):
    victim = {k: v.clone() for k, v in tiny_bundle.victim_state.items()}
    dormant = [3, 40, 77]
    victim["bn3.weight"][dormant], victim["bn3.bias"][dormant] = 0.0, -1.0  # ReLU outputs 0 on every image
    state, info = model_defence("fp", tiny_bundle.task, victim, budget, torch.Generator().manual_seed(0),
                                DefenceSettings(epochs=1))
    pruned = info["pruned_channels"]
    assert set(dormant) <= set(pruned) and len(pruned) < info["channels"] == 128
    assert info["budget_acc_before"] - info["budget_acc_pruned"] <= 0.1 * info["budget_acc_before"]
    assert torch.count_nonzero(state["linear.weight"][:, pruned]) == 0  # still zero after the fine-tuning
    kept = [c for c in range(128) if c not in pruned]
    assert torch.count_nonzero(state["linear.weight"][:, kept]) == state["linear.weight"][:, kept].numel()
    assert not torch.equal(state["conv1.weight"], victim["conv1.weight"])  # then fine-tuned whole
    assert set(state) == set(victim)  # a plain state dict, no pruning masks left in it


def test_clp_zeroes_only_the_channels_over_the_bound(tiny_bundle):
    victim = {k: v.clone() for k, v in tiny_bundle.victim_state.items()}
    victim["conv2.weight"][5] *= 1000  # channel 5 of conv2-bn2 gets a huge Lipschitz bound
    state, info = model_defence("clp", tiny_bundle.task, victim, None, torch.Generator())
    assert 5 in info["pruned_channels"]["bn2"] and info["u"] == 3.0
    for conv, bn in (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")):  # the bound, computed channel by channel
        w = victim[f"{conv}.weight"]
        scale = (victim[f"{bn}.weight"] / (victim[f"{bn}.running_var"] + 1e-5).sqrt()).abs()
        bound = torch.stack([torch.linalg.svdvals(w[c].reshape(w.shape[1], -1))[0] for c in range(len(w))]) * scale
        over = (bound > bound.mean() + 3 * bound.std()).nonzero().flatten().tolist()
        assert info["pruned_channels"][bn] == over
        for key in (f"{bn}.weight", f"{bn}.bias"):
            assert torch.count_nonzero(state[key][over]) == 0
            keep = [c for c in range(len(w)) if c not in over]
            assert torch.equal(state[key][keep], victim[key][keep])
    assert _changed(victim, state) <= {"bn1.weight", "bn1.bias", "bn2.weight", "bn2.bias", "bn3.weight", "bn3.bias"}


def test_bad_defence_names_and_missing_budget(tiny_bundle):
    with pytest.raises(ValueError, match="unknown model defence 'nope'"):
        model_defence("nope", tiny_bundle.task, tiny_bundle.victim_state, None, torch.Generator())
    with pytest.raises(ValueError, match="the ft defence trains on clean data"):
        model_defence("ft", tiny_bundle.task, tiny_bundle.victim_state, None, torch.Generator())


def test_run_defence_dispatches_and_times_every_defence(tiny_bundle, budget):
    bundle = with_recipe(tiny_bundle, save_every=3)
    seeded = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    layer = run_defence("finetune", bundle.task, bundle.layout, bundle.victim_state, budget, seeded(), DefenceSettings(k=2))
    assert layer.state is None and layer.details is None and layer.seconds > 0
    assert torch.equal(layer.vectors, layer_defence("finetune", bundle.task, bundle.layout, bundle.victim_state,
                                                     budget, seeded(), k=2))  # the same run, the same generator
    whole = run_defence("clp", bundle.task, bundle.layout, bundle.victim_state, None, seeded(), DefenceSettings(k=2))
    state, info = model_defence("clp", bundle.task, bundle.victim_state, None, seeded())
    assert whole.vectors is None and whole.details == info and whole.state.keys() == state.keys()
    assert all(torch.equal(whole.state[k], state[k]) for k in state)
    with pytest.raises(ValueError, match="unknown model defence 'nope'"):
        run_defence("nope", bundle.task, bundle.layout, bundle.victim_state, None, seeded(), DefenceSettings(k=2))
