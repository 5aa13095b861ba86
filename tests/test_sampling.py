import dataclasses
import json

import pytest
import torch
from safetensors import safe_open

from pdiff.core.params import layout_from_json, unflatten
from pdiff.core.settings import SamplingSpec
from pdiff.generator.sampling import SAMPLES_FILE, Samples, draw, sample


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


def test_draw_follows_its_spec_marks_nonfinite_rows_and_bad_n_is_refused(tiny_bundle):
    spec = SamplingSpec(n=3, sampler="ddim", steps=3, seed=4)
    samples = draw(tiny_bundle, spec)
    assert samples.finite.tolist() == [True] * 3 and samples.vectors.shape[0] == 3
    assert samples.spec == dataclasses.replace(spec, condition="none")  # "default" resolved: the tiny bundle asks nothing
    assert torch.equal(samples.vectors, sample(tiny_bundle, 3, "ddim", 3, torch.Generator().manual_seed(4)))
    broken = Samples(samples.vectors.clone(), spec, tiny_bundle)
    broken.vectors[1, 0] = float("nan")
    assert broken.finite.tolist() == [True, False, True]
    with pytest.raises(ValueError, match="n must be at least 1"):
        sample(tiny_bundle, 0)
    with pytest.raises(ValueError, match="sampling.n must be a whole number of at least 1, got 0"):
        SamplingSpec(n=0)
    with pytest.raises(ValueError, match="sampling.sampler must be one of ddpm, ddim"):
        SamplingSpec(sampler="euler")


def test_saved_samples_carry_their_layout(tiny_bundle, tmp_path):
    samples = draw(tiny_bundle, SamplingSpec(n=2, sampler="ddim", steps=3))
    vectors = samples.vectors
    assert samples.save(tmp_path / "s.safetensors") == tmp_path / "s.safetensors"
    assert samples.save(tmp_path / "folder") == tmp_path / "folder" / SAMPLES_FILE  # a folder gets the usual name
    with safe_open(tmp_path / "s.safetensors", "pt") as f:
        meta = f.metadata()
        assert layout_from_json(json.loads(meta["layout"])) == tiny_bundle.layout
        assert meta["sampler"] == "ddim" and meta["steps"] == "3"
        by_name = unflatten(vectors, tiny_bundle.layout)
        assert all(torch.equal(f.get_tensor(n), by_name[n]) for n in tiny_bundle.names)
