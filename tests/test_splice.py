import pytest
import torch

from pdiff.core.params import flatten, layout_of
from pdiff.core.splice import check_target, select_layers, splice, stacked_params
from pdiff.models.tasks import build_model, get_task


def _model(seed):
    torch.manual_seed(seed)
    return build_model(get_task("fmnist-convnet"))


def test_splice_into_fresh_model_equals_original():
    task = get_task("fmnist-convnet")
    src, fresh = _model(0).state_dict(), _model(1).state_dict()
    layout = layout_of(src, task.train_layer)
    vector = flatten({n: src[n][None] for n in task.train_layer}, layout)[0]
    out = splice(fresh, vector, layout)
    for name in task.train_layer:
        assert torch.equal(out[name], src[name])
    assert torch.equal(out["conv1.weight"], fresh["conv1.weight"])  # the trunk stays the target's


def test_splicing_a_subset_leaves_the_others_untouched():
    task = get_task("fmnist-convnet")
    src, target = _model(0).state_dict(), _model(1).state_dict()
    layout = layout_of(src, task.train_layer)
    vector = flatten({n: src[n][None] for n in task.train_layer}, layout)[0]
    out = splice(target, vector, layout, layers=["linear.bias", "bn3.weight"])
    assert torch.equal(out["linear.bias"], src["linear.bias"]) and torch.equal(out["bn3.weight"], src["bn3.weight"])
    assert torch.equal(out["linear.weight"], target["linear.weight"]) and torch.equal(out["bn3.bias"], target["bn3.bias"])
    assert select_layers(layout, ["linear.bias", "bn3.weight"]) == ["bn3.weight", "linear.bias"]


def test_unknown_layers_and_shape_mismatch_are_named():
    task = get_task("fmnist-convnet")
    state = _model(0).state_dict()
    layout = layout_of(state, task.train_layer)
    with pytest.raises(ValueError, match="layers not in the bundle's train_layer: conv9.weight"):
        select_layers(layout, ["conv9.weight"])
    bad = dict(state)
    bad["linear.weight"] = torch.zeros(5, 128)
    del bad["bn3.bias"]
    with pytest.raises(ValueError) as err:
        check_target(bad, layout)
    assert "bn3.bias (missing in target)" in str(err.value) and "linear.weight (target (5, 128)" in str(err.value)


def test_nonfinite_vectors_are_refused():
    task = get_task("fmnist-convnet")
    state = _model(0).state_dict()
    layout = layout_of(state, task.train_layer)
    vectors = flatten({n: state[n][None].repeat(3, *[1] * state[n].ndim) for n in task.train_layer}, layout)
    vectors[1, 5] = float("nan")
    with pytest.raises(ValueError, match="1 vectors have non-finite values"):
        stacked_params(vectors, layout, state)
