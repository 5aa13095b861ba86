import copy

import pytest
import torch

from pdiff import plots
from pdiff.backdoor import der
from pdiff.data import Split
from pdiff.evaluate import BatchedEvaluator, iou_matrix, mean_offdiag, tsne_2d
from pdiff.report import NOT_APPLICABLE, familiar_lines, run_report
from pdiff.targets import check_architecture
from pdiff.transfer import TABLE_HEADERS, table_rows

from helpers import with_recipe


def _sources(report):
    return {"generated": report["generated"], "originals": report["originals"], **report["baselines"],
            **report.get("defences", {})}


def test_iou_by_matrices_equals_brute_force():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(5, 40, generator=g) < 0.3
    b = torch.rand(4, 40, generator=g) < 0.5
    m = iou_matrix(a, b)
    for i in range(5):
        for j in range(4):
            sa = {k for k in range(40) if a[i, k]}
            sb = {k for k in range(40) if b[j, k]}
            assert m[i, j].item() == pytest.approx(len(sa & sb) / len(sa | sb))
    assert mean_offdiag(iou_matrix(a, a)) == pytest.approx(
        sum(iou_matrix(a, a)[i, j].item() for i in range(5) for j in range(5) if i != j) / 20)


def test_batched_equals_one_model_at_a_time(tiny_bundle, small_test):
    model = check_architecture(tiny_bundle.task, tiny_bundle.base_state)
    ev = BatchedEvaluator(model, small_test.normalized(), tiny_bundle.names, max_elements=50_000)
    stacked = {n: v[:3] for n, v in
               zip(tiny_bundle.names, torch.split(tiny_bundle.originals, [torch.Size(s).numel() for _, s in tiny_bundle.layout], 1))}
    stacked = {n: stacked[n].reshape(3, *s) for n, s in tiny_bundle.layout}
    batched = ev.predict_many(stacked, models_per_chunk=2)
    for i in range(3):
        state = dict(tiny_bundle.base_state)
        state.update({n: v[i] for n, v in stacked.items()})
        one = check_architecture(tiny_bundle.task, state)
        with torch.no_grad():
            assert torch.equal(one(small_test.normalized()).argmax(-1), batched[i])


@pytest.fixture(scope="module")
def victim_report(tiny_bundle, small_test):
    return run_report(tiny_bundle, "victim", n=7, seed=0, sampler="ddim", steps=5, test=small_test)[0]


def test_report_has_every_key_with_lists_of_length_n(victim_report):
    r = victim_report
    for key in ("task", "target", "n", "seed", "layers", "generated", "originals", "baselines", "summary",
                "similarity", "tsne", "timings_s", "device"):
        assert key in r, key
    assert r["n"] == 7 and r["generated"]["nonfinite"] == 0
    for key in ("acc", "asr", "ra", "der"):
        assert len(r["generated"][key]) == 7
    for key in ("acc", "asr", "ra"):
        assert len(r["originals"][key]) == 8
    assert {"acc", "asr"} <= set(r["target"])
    assert set(r["baselines"]) == {"noise_0.01", "noise_0.05", "noise_0.15", "interpolation", "average", "gaussian",
                                   "clean-layers"}  # the control a backdoored target gets
    assert "needs at least 16 originals" in r["unavailable"]["average-16"]  # K = 8: said in its place
    assert len(r["similarity"]["max_iou_to_originals"]) == 7
    assert set(r["similarity"]["mean_iou"]) == {"oo", "gg", "og"}
    assert len(r["tsne"]["x"]) == len(r["tsne"]["source"]) == 7 + 8 + 4 * 7 + 1 + 7 + 1  # + clean-layers
    assert set(r["summary"]["generated"]) == {"best", "mean", "median", "min", "std"}
    assert set(r["timings_s"]) == {"sample", "evaluate"}


def test_der_follows_the_formula(victim_report):
    r = victim_report
    expected = der(r["target"]["acc"], r["target"]["asr"], r["generated"]["acc"], r["generated"]["asr"])
    assert r["generated"]["der"] == pytest.approx(expected)
    for value, acc, asr in zip(r["generated"]["der"], r["generated"]["acc"], r["generated"]["asr"]):
        by_hand = (max(0.0, r["target"]["asr"] - asr) / 100 - max(0.0, r["target"]["acc"] - acc) / 100 + 1) / 2
        assert value == pytest.approx(by_hand)


def test_originals_in_the_clean_target_match_the_collection(tiny_bundle, small_test):
    r, _ = run_report(tiny_bundle, "clean", n=3, sampler="ddim", steps=3, test=small_test, with_tsne=False)
    assert r["originals"]["acc"] == pytest.approx(tiny_bundle.meta["originals_acc"], abs=1e-6)
    assert r["backdoor"] == NOT_APPLICABLE and "asr" not in r["generated"] and "asr" not in r["target"]
    assert "average:" in familiar_lines(r)


def _broken(bundle, value):
    """A copy of the bundle whose decoder emits `value` (nan or inf) in every vector."""
    broken = copy.copy(bundle)
    broken.autoencoder = copy.deepcopy(bundle.autoencoder)
    with torch.no_grad():
        broken.autoencoder.decoder[-1].bias[0] = value
    return broken


def test_nonfinite_parameter_sets_are_counted_not_spliced(tiny_bundle, small_test):
    r, vectors = run_report(_broken(tiny_bundle, float("nan")), "clean", n=4, sampler="ddim", steps=3, test=small_test, with_tsne=False)
    assert r["generated"]["nonfinite"] == 4 and r["generated"]["acc"] == []
    assert r["summary"]["generated"]["mean"] is None and torch.isnan(vectors).any()


def test_tsne_is_seeded_and_handles_tiny_inputs():
    x = torch.randn(12, 30, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tsne_2d(x, seed=1), tsne_2d(x, seed=1))
    assert tsne_2d(x[:2]).shape == (2, 2)


def test_plots_build_from_a_real_report(victim_report):
    acc = plots.accuracy_distribution(victim_report)
    assert [t.name for t in acc.data][:2] == ["generated", "originals"]
    assert list(acc.data[0].y) == victim_report["generated"]["acc"]
    assert list(plots.asr_distribution(victim_report).data[0].y) == victim_report["generated"]["asr"]
    tsne = plots.tsne_scatter(victim_report)
    assert sum(len(t.x) for t in tsne.data) == len(victim_report["tsne"]["x"])
    iou = plots.accuracy_vs_iou(victim_report)
    assert list(iou.data[0].x) == victim_report["similarity"]["max_iou_to_originals"]
    scatter = plots.acc_vs_asr(victim_report)
    assert list(scatter.data[0].x) == victim_report["generated"]["asr"]
    assert scatter.data[-1].x[0] == victim_report["target"]["asr"] and len(scatter.data) == 1 + 8 + 1  # + clean-layers
    assert scatter.data[-1].marker.symbol == "x" and scatter.data[-1].name == "target as-is (victim)"
    rows = plots.summary_rows(victim_report)
    assert rows[0][:2] == ["generated", len(victim_report["generated"]["acc"])]
    assert len(rows[0]) == len(plots.summary_headers(victim_report)) == 10
    nov = victim_report["novelty"]["generated"]
    assert rows[0][6:] == [round(victim_report["summary"]["generated"]["std"], 3), round(nov["self_iou"], 3),
                           round(nov["max_iou_mean"], 3), round(nov["coverage"], 3)]
    # the novelty scatter: every source's models, the originals' nearest-other IoU as the reference line
    assert {t.name for t in iou.data} == set(victim_report["similarity"]["per_model"])
    assert iou.layout.shapes[0].x0 == victim_report["novelty"]["originals"]["nearest_other_iou_mean"]
    transfer = table_rows(victim_report["target"], _sources(victim_report))
    assert transfer[0][0].startswith("target as-is") and transfer[0][4] == round(victim_report["target"]["asr"], 2)
    gen = victim_report["generated"]
    assert transfer[1][:3] == ["generated", "0 (+ clean checkpoints)", len(gen["acc"])]
    assert len(transfer[1]) == len(TABLE_HEADERS)
    assert transfer[1][6] == round(sum(gen["der"]) / len(gen["der"]), 3) and transfer[1][7] == round(max(gen["der"]), 3)
    assert {"clean-layers": "0 (+ clean model)"}.items() <= {row[0]: row[1] for row in transfer}.items()


def test_report_with_the_defences_beside_the_generator(tiny_bundle, small_train, small_test):
    bundle = with_recipe(tiny_bundle, save_every=2)
    train = Split(small_train.images[:640], small_train.labels[:640], small_train.dataset)  # 5%: 32 images, too few
    with pytest.raises(ValueError, match="under one batch"):
        run_report(bundle, "victim", n=3, sampler="ddim", steps=3, test=small_test, with_tsne=False,
                   defences_train=train)
    big = Split(small_train.images.repeat(3, 1, 1, 1), small_train.labels.repeat(3), small_train.dataset)  # 5%: 154
    r, _ = run_report(bundle, "victim", n=3, sampler="ddim", steps=3, test=small_test, with_tsne=False,
                      defences_train=big, defence_epochs=1)
    clean, _ = run_report(bundle, "clean", n=3, sampler="ddim", steps=3, test=small_test, with_tsne=False,
                          defences_train=big, defence_epochs=1)
    for name in ("finetune", "reinit"):  # the final checkpoint, with every backdoor metric and its clean data
        assert len(r["baselines"][name]["acc"]) == len(r["baselines"][name]["der"]) == 1
        assert r["baselines"][name]["clean_images"] == 154
    assert list(r["defences"]) == ["ft", "fp", "clp"] and r["defences"]["clp"]["clean_images"] == 0
    for m in r["defences"].values():  # whole models, measured by the same engine: DER against the victim as-is
        assert m["der"] == pytest.approx(der(r["target"]["acc"], r["target"]["asr"], m["acc"], m["asr"]))
    rows = {row[0]: row for row in table_rows(r["target"], _sources(r))}
    assert {"finetune", "reinit", "ft", "fp", "clp", "clean-layers"} <= set(rows) and rows["ft"][1] == "154 images"
    names = [t.name for t in plots.acc_vs_asr(r).data]
    assert {"ft (mean)", "fp (mean)", "clp (mean)", "clean-layers (mean)"} <= set(names)
    assert "finetune" not in clean["baselines"] and not clean["defences"]  # a clean target has no backdoor


def test_nonfinite_sets_on_a_victim_keep_every_key(tiny_bundle, small_test):
    r, _ = run_report(_broken(tiny_bundle, float("inf")), "victim", n=3, sampler="ddim", steps=3, test=small_test, with_tsne=False)
    assert r["generated"]["nonfinite"] == 3 and r["generated"]["finite_index"] == []
    assert r["generated"]["asr"] == [] and r["generated"]["der"] == []
    assert r["summary_asr"]["generated"]["mean"] is None and len(r["originals"]["asr"]) == 8


def test_a_victim_file_brings_its_own_trigger(tiny_bundle, tiny_collection, small_train, small_test, tmp_path):
    import shutil

    from pdiff.backdoor import Trigger
    from pdiff.victims import run_victim

    shutil.copy(tiny_collection / "base.safetensors", tmp_path)  # a victim of its own, beside its own copy of the base
    task = with_recipe(tiny_bundle, finetune_epochs=1).task
    meta = run_victim(task, Trigger(kind="blend", opacity=0.15), tmp_path, small_train, small_test, seed=2,
                      kind="finetuned")
    r, _ = run_report(tiny_bundle, str(tmp_path / meta["file"]), n=3, sampler="ddim", steps=3, test=small_test,
                      with_tsne=False)
    assert r["target"]["trigger"]["kind"] == "blend" and r["target"]["trigger"]["opacity"] == 0.15
    assert r["target"]["trigger_source"] == "from the victim report beside the file"
    assert r["target"]["asr"] == pytest.approx(meta["asr"]) and r["target"]["acc"] == pytest.approx(meta["acc"])


def test_cached_engines_give_the_uncached_report(tiny_bundle, small_test):
    from pdiff.report import EngineCache

    engines = EngineCache(size=2)
    kwargs = dict(n=3, sampler="ddim", steps=3, test=small_test, with_tsne=False)
    plain, _ = run_report(tiny_bundle, "victim", seed=0, **kwargs)
    run_report(tiny_bundle, "victim", seed=5, engines=engines, **kwargs)  # fills the cache with another seed
    cached, _ = run_report(tiny_bundle, "victim", seed=0, engines=engines, **kwargs)
    assert len(engines) == 1
    for key in plain:
        if key != "timings_s":
            assert cached[key] == plain[key], key


def test_a_changed_model_file_is_not_served_from_the_cache(tiny_bundle, small_test, tmp_path):
    from safetensors.torch import save_file

    from pdiff.report import EngineCache

    engines = EngineCache(size=4)
    path = tmp_path / "upload.safetensors"
    kwargs = dict(n=2, sampler="ddim", steps=3, test=small_test, with_tsne=False, with_baselines=False, engines=engines)
    save_file(tiny_bundle.base_state, path)
    clean, _ = run_report(tiny_bundle, str(path), **kwargs)
    save_file(tiny_bundle.victim_state, path)  # same name, other content
    victim, _ = run_report(tiny_bundle, str(path), **kwargs)
    assert len(engines) == 2
    # the tiny base and victim may agree on accuracy; their predictions do not
    assert (victim["target"]["acc"], victim["target"]["asr"]) != (clean["target"]["acc"], clean["target"]["asr"])
    assert victim["target"]["asr"] == pytest.approx(run_report(tiny_bundle, "victim", n=2, sampler="ddim", steps=3,
                                                               test=small_test, with_tsne=False,
                                                               with_baselines=False)[0]["target"]["asr"])


def test_coverage_on_constructed_masks():
    from pdiff.evaluate import similarity

    g = torch.Generator().manual_seed(0)
    originals = torch.rand(6, 300, generator=g) < 0.2
    copies = similarity({"originals": originals, "copies": originals.clone()})
    assert copies["copies"]["coverage"] == 1.0 and copies["copies"]["max_iou_mean"] == 1.0
    one = similarity({"originals": originals, "one": originals[:1].clone()})
    assert one["one"]["coverage"] == pytest.approx(1 / 6)  # one model can only cover the original it copies
    assert len(copies["originals"]["nearest_other_iou"]) == 6


def test_comparison_space_leaves_out_tensors_without_spread():
    from pdiff.bundle import Bundle
    from pdiff.params import comparison_space

    deep = Bundle.load("checkpoints/fmnist-convnet-deep/bundle")
    space = comparison_space(deep.originals, deep.norm_mean, deep.norm_std, deep.layout)
    assert space.shape[1] == deep.originals.shape[1] - 2 * 128  # bn3's running statistics are constant
    xy = tsne_2d(space[:20], seed=0)
    assert torch.isfinite(xy).all() and xy.abs().max() < 1000 and space.abs().max() < 100


def test_batchnorm_reestimation_equals_a_train_mode_pass(small_train, small_test):
    from pdiff.evaluate import TargetEngine
    from pdiff.params import flatten
    from pdiff.targets import Target
    from pdiff.tasks import build_model, get_task

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
