"""Conditional generation: classifier-free guidance at scale 0 is the unconditional model; a two-mode toy follows its
condition and mixes without one; signatures are stable across probe draws; conditions the bundle does not know are
refused in one line."""
import pytest
import torch

from pdiff.core.config import DDPMConfig
from pdiff.core.settings import Condition, SamplingSpec
from pdiff.data.datasets import Split
from pdiff.generator.conditions import Conditions, guide_for, probe_set, resolve, signature
from pdiff.generator.diffusion import Diffusion, Guide
from pdiff.generator.training import train_denoiser


@pytest.fixture(scope="module")
def two_modes():
    """A small conditional denoiser on a 1D two-mode distribution, +-2 with noise 0.1; the condition is the sign."""
    g = torch.Generator().manual_seed(0)
    signs = torch.where(torch.rand(512, generator=g) < 0.5, -1.0, 1.0)
    data = (2 * signs + 0.1 * torch.randn(512, generator=g)).view(512, 1, 1).repeat(1, 1, 4)
    cfg = DDPMConfig(channels=32, blocks=2, steps=1500, lr=2e-3, batch_size=128, ema_decay=0.99, condition_dim=1,
                     condition_drop=0.2)
    ema, _ = train_denoiser(data, cfg, torch.Generator().manual_seed(1), cond=signs.view(-1, 1))
    return ema, cfg


def _untrained_conditional():
    """The toy's conditional denoiser as initialised: what guidance at scale 0 does needs no training."""
    from pdiff.generator.nets import Denoiser

    cfg = DDPMConfig(channels=32, blocks=2, condition_dim=1, condition_drop=0.2)
    torch.manual_seed(0)
    return Denoiser((1, 4), cfg).eval(), cfg


def _draw(denoiser, cfg, guide=None, n=200):
    d = Diffusion(cfg.timesteps, cfg.beta_start, cfg.beta_end)
    return d.sample(denoiser, (n, 1, 4), "ddim", 50, torch.Generator().manual_seed(2), guide=guide).mean((1, 2))


def test_guidance_at_scale_zero_is_the_unconditional_model():
    denoiser, cfg = _untrained_conditional()
    plus = Guide(torch.ones(200, 1), scale=0.0)
    assert torch.equal(_draw(denoiser, cfg, plus), _draw(denoiser, cfg, None))
    # and the guided prediction itself, at scale 0, is the null one
    x, t = torch.randn(5, 1, 4), torch.full((5,), 500)
    eps = Guide(torch.ones(5, 1), scale=0.0).guided(denoiser, 5, "cpu")(x, t)
    assert torch.equal(eps, denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.ones(10, 1),
                                     torch.tensor([True] * 5 + [False] * 5))[5:])


@pytest.mark.slow  # trains the toy: 1,500 steps
def test_a_two_mode_toy_follows_its_condition_and_mixes_without_one(two_modes):
    denoiser, cfg = two_modes
    for sign in (-1.0, 1.0):
        x = _draw(denoiser, cfg, Guide(torch.full((200, 1), sign), scale=1.0))
        assert ((x * sign) > 1.0).float().mean() > 0.9, sign  # the asked mode
    free = _draw(denoiser, cfg, None)
    near = ((free.abs() - 2).abs() < 0.5).float().mean()
    assert near > 0.8 and 0.2 < (free > 0).float().mean() < 0.8  # both modes, neither alone


def test_a_signature_is_stable_across_probe_draws(tiny_bundle, small_train):
    pool = small_train
    first = probe_set(pool, per_class=10)
    rest = Split(pool.images.flip(0), pool.labels.flip(0), pool.dataset)  # other images of the same classes
    second = probe_set(rest, per_class=10)
    assert not torch.equal(first.images, second.images)
    names = tiny_bundle.names
    own_a = signature(tiny_bundle.task, tiny_bundle.base_state, names, first)
    own_b = signature(tiny_bundle.task, tiny_bundle.base_state, names, second)
    other = signature(tiny_bundle.task, tiny_bundle.victim_state, names, first)
    cos = torch.nn.functional.cosine_similarity
    assert own_a.shape == (128,)
    assert cos(own_a, own_b, dim=0) > 0.8 and (own_a - own_b).norm() < (own_a - other).norm()


def test_a_condition_is_parsed_once_and_resolved_to_the_guidance_sampling_uses():
    asked = SamplingSpec(condition="acc=72.5")
    assert asked.condition == Condition("acc", "72.5") and str(asked.condition) == "acc=72.5"
    assert asked.to_dict()["condition"] == "acc=72.5"  # a report records the text
    for text in ("default", "none", "acc=best", "trunk=target", "trunk=victim.pth"):
        assert str(Condition.parse(text)) == text and Condition.parse(Condition.parse(text)) == Condition.parse(text)
    with pytest.raises(ValueError, match="condition 'acc=high': acc takes a number"):  # at the edge, not at sampling
        SamplingSpec(condition="acc=high")
    chose = Conditions.of("acc", torch.tensor([91.0, 93.0]), {"range": [91.0, 93.0], "guidance": 2.0})
    plain = Conditions.of("acc", torch.tensor([91.0, 93.0]), {"range": [91.0, 93.0]})  # chose no scale
    cases = [(SamplingSpec(), chose, Condition("acc", "best"), 2.0),  # default: what the bundle is for, its own scale
             (SamplingSpec(guidance=0.5), chose, Condition("acc", "best"), 0.5),  # the scale asked
             (SamplingSpec(condition="acc=92"), plain, Condition("acc", "92"), 1.0),  # none chosen: plain conditioning
             (SamplingSpec(condition="none", guidance=3.0), chose, Condition("none"), None),  # no condition guides
             (SamplingSpec(guidance=3.0), None, Condition("none"), None)]  # an unconditional bundle
    for spec, conditions, condition, guidance in cases:
        resolved = resolve(spec, conditions)
        assert (resolved.condition, resolved.guidance) == (condition, guidance)
        assert resolve(resolved, conditions) == resolved  # resolved once; again changes nothing
    layers = ["w"]
    assert guide_for(SamplingSpec(n=2), chose, None, layers).scale == 2.0  # the Guide samples with the recorded scale


def test_conditions_a_bundle_does_not_know_are_refused_in_one_line(tiny_bundle, small_train):
    c = Conditions.of("acc", torch.tensor([91.0, 92.0, 93.0]), {"range": [91.0, 93.0]})
    layers = tiny_bundle.names
    with pytest.raises(ValueError, match="trained without a condition; ask for none"):
        guide_for(SamplingSpec(condition="acc=best"), None, tiny_bundle.task, layers)
    with pytest.raises(ValueError, match="trained on the acc condition, not trunk"):
        guide_for(SamplingSpec(condition="trunk=target"), c, tiny_bundle.task, layers)
    with pytest.raises(ValueError, match=r"acc=95 is outside the validation accuracies this bundle saw \(91.00 to 93.00\)"):
        guide_for(SamplingSpec(condition="acc=95"), c, tiny_bundle.task, layers)
    with pytest.raises(ValueError, match="sampling.guidance must be at least 0"):
        SamplingSpec(condition="acc=best", guidance=-1.0)
    with pytest.raises(ValueError, match="sampling.condition must be default, none, acc=VALUE"):
        SamplingSpec(condition="colour=red")
    guide = guide_for(SamplingSpec(n=4, condition="acc=best", guidance=2.0), c, tiny_bundle.task, layers)
    assert guide.scale == 2.0 and torch.allclose(guide.cond, torch.full((4, 1), 1.0))  # 93 is one std above 92
    trunk = Conditions.of("trunk", torch.randn(3, 128), {}, probe_set(small_train, 5))
    with pytest.raises(ValueError, match="trunk=target needs a target model"):
        guide_for(SamplingSpec(condition="trunk=target"), trunk, tiny_bundle.task, layers)


@pytest.mark.slow  # trains the toy: 1,500 steps
def test_the_swap_test_on_a_toy_task_collapses(two_modes):
    """Target A is the +2 mode; a set 'works' on A when it lands near +2. Asked for A's condition the sets work;
    asked for B's (the swap) they do not: the condition, not the average of the modes, decides."""
    denoiser, cfg = two_modes
    works_on_a = lambda x: ((x - 2).abs() < 0.5).float().mean()  # noqa: E731
    assert works_on_a(_draw(denoiser, cfg, Guide(torch.full((200, 1), 1.0), 1.0))) > 0.9
    assert works_on_a(_draw(denoiser, cfg, Guide(torch.full((200, 1), -1.0), 1.0))) < 0.1


def test_a_signature_from_a_model_of_another_shape_is_refused(tiny_bundle, small_train, tmp_path):
    from safetensors.torch import save_file

    trunk = Conditions.of("trunk", torch.randn(3, 128), {}, probe_set(small_train, 5))
    other = {k: v.clone() for k, v in tiny_bundle.base_state.items()}
    first = next(k for k, v in other.items() if v.dim() > 0)
    other[first] = torch.zeros(other[first].shape[0] + 1, *other[first].shape[1:])
    save_file(other, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="condition trunk=.*other.safetensors: .*"):
        guide_for(SamplingSpec(condition=f"trunk={tmp_path / 'other.safetensors'}"), trunk, tiny_bundle.task,
                  tiny_bundle.names)


@pytest.mark.slow
def test_an_acc_conditional_bundle_from_the_cli_samples_what_it_is_asked(tiny_collection, tmp_path):
    """train --condition acc records every original's validation accuracy and a guidance scale chosen on validation;
    evaluate with acc=best reports the top-q Gaussians and the originals' top-q bar; none samples unconditionally."""
    import json

    from pdiff import cli
    from pdiff.generator.bundle import Bundle

    out = tmp_path / "acc"
    args = ["--train-subset", "1024", "--test-subset", "300"]
    assert cli.main(["train", "--collection", str(tiny_collection), "--out", str(out), "--condition", "acc",
                     "--validation", "200", "--ae-steps", "30", "--ddpm-steps", "30", "--no-recon-eval",
                     "--guidance-sampler", "ddim", "--guidance-steps", "5", *args]) == 0
    bundle = Bundle.load(out)
    c = bundle.conditions
    assert c.kind == "acc" and c.values.shape == (len(bundle.originals), 1)
    assert c.meta["guidance"] in (0.0, 0.5, 1.0, 2.0, 3.0) and len(c.meta["guidance_on_validation"]["mean_validation_acc"]) == 5
    assert (c.meta["guidance_on_validation"]["sampler"], c.meta["guidance_on_validation"]["steps"]) == ("ddim", 5)
    assert c.meta["range"] == [c.values.min().item(), c.values.max().item()]
    report = tmp_path / "r.json"
    assert cli.main(["evaluate", "--bundle", str(out), "--target", "clean", "--n", "6", "--sampler", "ddim", "--steps",
                     "5", "--condition", "acc=best", "--validation", "200", "--json", str(report), *args]) == 0
    r = json.loads(report.read_text())
    assert r["condition"]["kind"] == "acc" and r["condition"]["asked"] == "acc=best"
    assert set(r["condition"]["originals_top_by_validation"]) == {"top10", "top25", "top50"}
    assert {"gaussian_top10_t0.5", "gaussian_top25_t1", "gaussian_top50_t0"} <= set(r["sources"])
    assert cli.main(["sample", "--bundle", str(out), "--n", "3", "--sampler", "ddim", "--steps", "5", "--condition",
                     "acc=200", "--out", str(tmp_path / "s.safetensors")]) == 2  # outside the range: refused


@pytest.mark.slow
def test_the_trunk_study_sets_every_control_beside_the_generated_layers(tmp_path, small_train, small_test):
    """Three scratch trunks, one held out; a trunk-conditional bundle asked for the held-out trunk's signature, beside
    every control the study promises (numbers are not judged at this size: the study's run is in docs/conditions.md)."""
    from pdiff.collection.collect import run_collect
    from pdiff.collection.folder import Collection
    from pdiff.core.config import AEConfig, DDPMConfig
    from pdiff.core.settings import CollectSpec, DataSpec
    from pdiff.data.plan import RunData
    from pdiff.generator.conditions import trunk_conditions
    from pdiff.generator.training import train_bundle
    from pdiff.models.tasks import get_task
    from pdiff.studies.trunks import trunk_lines, trunk_study

    task = get_task("fmnist-convnet")
    task.recipe.epochs, task.recipe.save_every = 1, 4
    data = RunData(small_test, small_train, DataSpec(validation=0))
    run_collect(task, data, 0, CollectSpec(k=12, trunks=3, trunk_mode="scratch"), out=tmp_path)
    coll = Collection.load(tmp_path, [2])
    conditions = trunk_conditions(coll, probe_set(small_train, 5))
    bundle = train_bundle(coll, AEConfig(channels=[16, 32], steps=20),
                          DDPMConfig(channels=32, blocks=2, steps=20, condition_dim=conditions.dim), 0,
                          conditions=conditions)
    assert bundle.info.held_out_trunks == [2] and bundle.conditions.kind == "trunk"
    report = trunk_study(bundle, tmp_path, RunData(small_test), SamplingSpec(4, "ddim", 3, seed=0))
    sources = report["trunks"]["2"]["sources"]
    assert {"trunk_as_is", "own_checkpoints", "generated", "unconditional", "swap", "random", "retrieval",
            "retrieval_gaussian", "average", "nearest_mean", "probe", "stitch+clean-layers"} == set(sources)
    assert len(sources["generated"]["acc"]) == 4 and len(sources["own_checkpoints"]["acc"]) == 4
    assert report["trunks"]["2"]["nearest_trunk"] in (0, 1) and report["probe_images"] == 50
    assert "trunk 2" in trunk_lines(report)


def test_the_app_s_form_parses_its_condition_where_the_request_enters():
    from pdiff.app.request import RunRequest
    from pdiff.generator.locate import load_bundle

    bundle = load_bundle("fmnist-convnet")  # accuracy-conditional
    form = {"bundle": "fmnist-convnet", "target": "clean", "condition": "acc", "acc": "92.9"}
    assert RunRequest.from_form(form, bundle).sampling.condition == Condition("acc", "92.9")  # the slider's value
    assert RunRequest.from_form({**form, "condition": "acc=best"}, bundle).sampling.condition == Condition("acc", "best")
    with pytest.raises(ValueError, match="condition 'trunk=target': this bundle offers default, none, acc=best, acc"):
        RunRequest.from_form({**form, "condition": "trunk=target"}, bundle)
    with pytest.raises(ValueError, match="condition acc needs an accuracy"):
        RunRequest.from_form({**form, "acc": "high"}, bundle)
