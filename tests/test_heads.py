"""A head as numbers over channels and classes: its logits on the trunk's standardised features are the model's own;
features of the wrong width or not finite are refused in one line."""
import pytest
import torch

from pdiff.models.archs import ConvNet
from pdiff.models.heads import HeadForm, form_of, head_features, head_logits, own_head, standardise


def _model(seed=0):
    torch.manual_seed(seed)
    model = ConvNet().eval()
    with torch.no_grad():  # running statistics and an affine that are not the defaults
        model.bn3.running_mean.uniform_(0, 2)
        model.bn3.running_var.uniform_(0.2, 1)
        model.bn3.weight.uniform_(0.5, 1.5)
        model.bn3.bias.uniform_(-0.2, 0.3)
    return model


def test_head_logits_on_standardised_features_are_the_models_own():
    model, images = _model(), torch.randn(16, 1, 28, 28)
    state = model.state_dict()
    form = HeadForm("bn3", "linear", 128, 10)
    units = standardise(head_features(model, images, form), state, form)
    with torch.no_grad():
        expected = model(images)
    assert torch.allclose(head_logits(units, own_head(state, form), form)[0], expected, atol=1e-4)


def test_the_form_is_read_from_a_layout_and_a_wrong_one_refused():
    state = _model().state_dict()
    layout = [(n, tuple(state[n].shape)) for n in ("bn3.weight", "bn3.bias", "linear.weight", "linear.bias")]
    assert form_of(layout) == HeadForm("bn3", "linear", 128, 10)
    with pytest.raises(ValueError, match="one BatchNorm's weight and bias and one linear layer's"):
        form_of(layout[2:])


def test_features_of_the_wrong_width_or_not_finite_are_refused():
    model = _model()
    with pytest.raises(ValueError, match="128 wide; the head generator's are 64"):
        head_features(model, torch.randn(2, 1, 28, 28), HeadForm("bn3", "linear", 64, 10))
    with torch.no_grad():
        model.conv3.weight[0] = float("nan")
    with pytest.raises(ValueError, match="not finite on 3 of 3 images"):
        head_features(model, torch.randn(3, 1, 28, 28), HeadForm("bn3", "linear", 128, 10))


def test_a_running_variance_below_zero_is_refused_in_one_line():
    model = _model()
    form = HeadForm("bn3", "linear", 128, 10)
    state = model.state_dict()
    state["bn3.running_var"] = state["bn3.running_var"].clone()
    state["bn3.running_var"][:2] = -1.0
    with pytest.raises(ValueError, match="not finite in 2 of 128 channels") as e:
        standardise(head_features(model, torch.randn(3, 1, 28, 28), form), state, form)
    assert "\n" not in str(e.value)
