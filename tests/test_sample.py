import json

import pytest
import torch
from safetensors import safe_open

from pdiff.params import layout_from_json, unflatten
from pdiff.sample import sample, sample_finite, save_samples


def test_sampling_is_seeded_and_batched(tiny_bundle):
    a = sample(tiny_bundle, 5, "ddim", 4, torch.Generator().manual_seed(0))
    assert a.shape == (5, tiny_bundle.originals.shape[1]) and torch.isfinite(a).all()
    assert torch.equal(a, sample(tiny_bundle, 5, "ddim", 4, torch.Generator().manual_seed(0)))
    assert not torch.equal(a, sample(tiny_bundle, 5, "ddim", 4, torch.Generator().manual_seed(1)))
    assert torch.cdist(a, a).add(torch.eye(5) * 1e9).min() > 0  # five different vectors, not one repeated


def test_samples_live_on_the_originals_scale(tiny_bundle):
    # de-normalisation puts samples back where the originals are, tensor by tensor
    gen = unflatten(sample(tiny_bundle, 16, "ddim", 8, torch.Generator().manual_seed(0)), tiny_bundle.layout)
    orig = unflatten(tiny_bundle.originals, tiny_bundle.layout)
    for name in tiny_bundle.names:
        spread = orig[name].std() + orig[name].mean().abs()
        assert (gen[name].mean() - orig[name].mean()).abs() < spread, name


def test_sample_finite_marks_nonfinite_rows_and_bad_n_is_refused(tiny_bundle):
    vectors, finite = sample_finite(tiny_bundle, 3, "ddim", 3, torch.Generator().manual_seed(0))
    assert finite.tolist() == [True] * 3 and vectors.shape[0] == 3
    with pytest.raises(ValueError, match="n must be at least 1"):
        sample(tiny_bundle, 0)


def test_saved_samples_carry_their_layout(tiny_bundle, tmp_path):
    vectors = sample(tiny_bundle, 2, "ddim", 3, torch.Generator().manual_seed(0))
    save_samples(tmp_path / "s.safetensors", vectors, tiny_bundle, "ddim", 3, seed=0)
    with safe_open(tmp_path / "s.safetensors", "pt") as f:
        meta = f.metadata()
        assert layout_from_json(json.loads(meta["layout"])) == tiny_bundle.layout
        assert meta["sampler"] == "ddim" and meta["steps"] == "3"
        by_name = unflatten(vectors, tiny_bundle.layout)
        assert all(torch.equal(f.get_tensor(n), by_name[n]) for n in tiny_bundle.names)
