
import pytest
import torch


from helpers import report


def test_cached_engines_give_the_uncached_report(tiny_bundle, small_test):
    from pdiff.measure.engine import EngineCache

    engines = EngineCache(size=2)
    kwargs = dict(n=3, sampler="ddim", steps=3, test=small_test, tsne=False)
    plain, _ = report(tiny_bundle, "victim", seed=0, **kwargs)
    report(tiny_bundle, "victim", seed=5, engines=engines, **kwargs)  # fills the cache with another seed
    cached, _ = report(tiny_bundle, "victim", seed=0, engines=engines, **kwargs)
    assert len(engines) == 1
    for key in plain:
        if key != "timings_s":
            assert cached[key] == plain[key], key


def test_a_changed_model_file_is_not_served_from_the_cache(tiny_bundle, small_test, tmp_path):
    from safetensors.torch import save_file

    from pdiff.measure.engine import EngineCache

    engines = EngineCache(size=4)
    path = tmp_path / "upload.safetensors"
    kwargs = dict(n=2, sampler="ddim", steps=3, test=small_test, tsne=False, baselines=False, engines=engines)
    save_file(tiny_bundle.base_state, path)
    clean, _ = report(tiny_bundle, str(path), **kwargs)
    save_file(tiny_bundle.victim_state, path)  # same name, other content
    victim, _ = report(tiny_bundle, str(path), **kwargs)
    assert len(engines) == 2
    # the tiny base and victim may agree on accuracy; their predictions do not
    assert (victim["target"]["acc"], victim["target"]["asr"]) != (clean["target"]["acc"], clean["target"]["asr"])
    assert victim["target"]["asr"] == pytest.approx(report(tiny_bundle, "victim", n=2, sampler="ddim", steps=3,
                                                               test=small_test, tsne=False,
                                                               baselines=False)[0]["target"]["asr"])


def test_batchnorm_reestimation_equals_a_train_mode_pass(small_train, small_test):
    from pdiff.measure.engine import TargetEngine
    from pdiff.core.params import flatten
    from pdiff.measure.targets import Target
    from pdiff.models.tasks import build_model, get_task

    task = get_task("fmnist-convnet-deep")
    torch.manual_seed(0)
    model = build_model(task).eval()
    layout = [(n, tuple(model.state_dict()[n].shape)) for n in task.train_layer]
    state = model.state_dict()
    g = torch.Generator().manual_seed(1)
    stacked = {n: (state[n] + 0.05 * torch.randn(3, *s, generator=g)) for n, s in layout}  # three "generated" sets
    images = small_train.subset(64)
    engine = TargetEngine(task, layout, Target("base", state, None), small_test, device="cpu", bn_images=images)
    estimated = engine.bn({n: v for n, v in stacked.items()})
    for i in range(3):  # bn3 alone in train mode, momentum None: one pass gives the batch statistics
        one = build_model(task)
        one.load_state_dict({**state, **{n: v[i] for n, v in stacked.items()}})
        one.eval()
        one.bn3.train()  # the trunk's BatchNorms keep their statistics: only the generated block's are measured
        one.bn3.reset_running_stats()
        one.bn3.momentum = None
        with torch.no_grad():
            one(images.normalized())
        assert torch.allclose(estimated["bn3.running_mean"][i], one.bn3.running_mean, atol=1e-5)
        assert torch.allclose(estimated["bn3.running_var"][i], one.bn3.running_var, rtol=1e-4, atol=1e-5)
    # the engine evaluates each model with its re-estimated statistics, not the spliced ones
    plain = TargetEngine(task, layout, Target("base", state, None), small_test, device="cpu")
    assert engine.run(flatten(stacked, layout))["acc"] == plain.run(flatten(estimated, layout))["acc"]
