import json

import pytest
import torch

from pdiff.core.settings import CollectSpec, DataSpec
from pdiff.data.plan import RunData

from safetensors.torch import load_file

from pdiff.data.triggers import Trigger
from pdiff.collection.collect import collect_checkpoints, run_collect
from pdiff.models.fit import init_model
from pdiff.collection.folder import BASE_FILE, CHECKPOINTS_FILE, MANIFEST_FILE, Collection, victim_files
from pdiff.models.staged import BatchedEvaluator, accuracies
from pdiff.core.params import flatten
from pdiff.core.splice import stacked_params
from pdiff.models.loading import check_architecture
from pdiff.models.tasks import get_task
from pdiff.collection.victims import run_victim


ALL = DataSpec(validation=0)  # these tiny models train on every image of the split


@pytest.fixture()
def tiny_task():
    task = get_task("fmnist-convnet")
    task.recipe.epochs, task.recipe.k, task.recipe.save_every = 1, 6, 4
    return task


def test_collection_writes_k_distinct_vectors_that_load_back(tmp_path, tiny_task, small_train, small_test):
    manifest = run_collect(tiny_task, RunData(small_test, small_train, ALL), 0, out=tmp_path).manifest()
    assert json.loads((tmp_path / MANIFEST_FILE).read_text()) == manifest
    params = load_file(tmp_path / CHECKPOINTS_FILE)
    layout = [(n, tuple(s)) for n, s in manifest["layout"]]
    assert [n for n, _ in layout] == tiny_task.train_layer
    vectors = flatten(params, layout)
    assert vectors.shape[0] == 6 and len(manifest["accs"]) == 6
    assert torch.cdist(vectors, vectors).add(torch.eye(6) * 1e9).min() > 0  # no two checkpoints equal
    assert manifest["diversity"]["relative"] > 1e-3

    # every collected vector, spliced into the saved base, reproduces its recorded accuracy
    base = load_file(tmp_path / BASE_FILE)
    model = check_architecture(tiny_task, base)
    evaluator = BatchedEvaluator(model, small_test.normalized(), tiny_task.train_layer)
    accs = accuracies(evaluator.predict_many(stacked_params(vectors, layout, base)), small_test.labels)
    assert accs == pytest.approx(manifest["accs"], abs=1e-6)
    assert abs(manifest["base_acc"] - 10.0) > 5  # it learned something (chance is 10%)


def test_collection_round_trips_through_its_one_writer_and_reader(tmp_path, tiny_task, small_train, small_test):
    coll = run_collect(tiny_task, RunData(small_test, small_train, ALL), 0, CollectSpec(k=4))  # in memory: nothing written
    assert not any(tmp_path.iterdir())
    coll.save(tmp_path)
    back = Collection.load(tmp_path)
    assert back.layout == coll.layout and back.accs == coll.accs and back.trunk_of == coll.trunk_of == [0] * 4
    assert all(torch.equal(back.params[n], coll.params[n]) for n in coll.params)
    assert all(torch.equal(back.base[n], coll.base[n]) for n in coll.base)
    assert back.manifest() == coll.manifest() == json.loads((tmp_path / MANIFEST_FILE).read_text())


def test_collection_freezes_trunk_and_batchnorm_stats(tiny_task, small_train, small_test):
    g = torch.Generator().manual_seed(0)
    model = init_model(tiny_task, g)
    for m in model.modules():  # give BN non-default statistics, as a trained model has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params, _ = collect_checkpoints(model, tiny_task, small_train, small_test, g, k=3)
    after = model.state_dict()
    for name, value in before.items():
        if name in tiny_task.train_layer:
            assert not torch.equal(after[name], value), name
            assert torch.equal(params[name][-1], after[name])
        else:
            assert torch.equal(after[name], value), f"{name} changed during collection"


def test_victim_reports_backdoor_metrics(tmp_path, tiny_task, small_train, small_test):
    from pdiff.collection.victims import backdoor_metrics

    report = run_victim(tiny_task, Trigger(target=0), tmp_path, RunData(small_test, small_train, ALL), 0)
    weights, meta = victim_files("scratch-badnets")
    saved = json.loads((tmp_path / meta).read_text())
    assert saved["trigger"]["target"] == 0 and saved["kind"] == "scratch" and saved["file"] == weights
    # the report's figures are those of the saved weights, measured again from the file
    model = check_architecture(tiny_task, load_file(tmp_path / weights))
    again = backdoor_metrics(model, small_test, Trigger(target=0))
    assert {k: report[k] for k in again} == pytest.approx(again)
    assert report["acc"] > 30 and report["asr"] + report["ra"] <= 100  # it learned something; ASR and RA exclude


def test_finetuned_victim_starts_from_the_clean_base(tmp_path, tiny_task, small_train, small_test):
    run_collect(tiny_task, RunData(small_test, small_train, ALL), 0, out=tmp_path)
    base = load_file(tmp_path / BASE_FILE)
    tiny_task.recipe.finetune_epochs = 0  # no training at all: the victim must be the base itself
    report = run_victim(tiny_task, Trigger(kind="blended"), tmp_path, RunData(small_test, small_train, ALL), 1, kind="finetuned")
    weights, meta = victim_files("finetuned-blended")
    assert report["file"] == weights == "victim-finetuned-blended.safetensors" and (tmp_path / meta).is_file()
    same = load_file(tmp_path / weights)
    assert all(torch.equal(same[k], base[k]) for k in base)
    tiny_task.recipe.finetune_epochs = 1  # one epoch moves it, but it stays near the base, far from a fresh init
    run_victim(tiny_task, Trigger(kind="blended"), tmp_path, RunData(small_test, small_train, ALL), 1, kind="finetuned")
    tuned = load_file(tmp_path / weights)
    fresh = init_model(tiny_task, torch.Generator().manual_seed(5)).state_dict()
    drift = (tuned["conv2.weight"] - base["conv2.weight"]).norm()
    assert 0 < drift < 0.5 * (fresh["conv2.weight"] - base["conv2.weight"]).norm()


def test_finetuned_victim_needs_a_base(tmp_path, tiny_task, small_train, small_test):
    with pytest.raises(FileNotFoundError, match="starts from the clean base"):
        run_victim(tiny_task, Trigger(), tmp_path, RunData(small_test, small_train, ALL), 1, kind="finetuned")


def test_multi_trunk_manifest_records_trunks_and_checkpoints_fit_their_own_trunk(tmp_path, tiny_task, small_train,
                                                                                 small_test):
    tiny_task.recipe.trunk_epochs = 1
    manifest = run_collect(tiny_task, RunData(small_test, small_train, ALL), 0, CollectSpec(k=7, trunks=3), out=tmp_path).manifest()
    assert [t["id"] for t in manifest["trunks"]] == [0, 1, 2]
    assert manifest["trunk_of"] == [0, 0, 0, 1, 1, 2, 2]  # K split as evenly as it goes, in trunk order
    assert manifest["trunks"][0]["file"] == BASE_FILE
    base, trunk1 = load_file(tmp_path / BASE_FILE), load_file(tmp_path / "trunk-1.safetensors")
    assert not torch.equal(base["conv1.weight"], trunk1["conv1.weight"])  # a derived trunk is another trunk
    layout = [(n, tuple(s)) for n, s in manifest["layout"]]
    vectors = flatten(load_file(tmp_path / CHECKPOINTS_FILE), layout)
    for trunk in manifest["trunks"]:  # each checkpoint reproduces its accuracy on the trunk it came from
        state = load_file(tmp_path / trunk["file"])
        rows = torch.tensor(manifest["trunk_of"]) == trunk["id"]
        evaluator = BatchedEvaluator(check_architecture(tiny_task, state), small_test.normalized(), tiny_task.train_layer)
        accs = accuracies(evaluator.predict_many(stacked_params(vectors[rows], layout, state)), small_test.labels)
        assert accs == pytest.approx([a for a, r in zip(manifest["accs"], rows) if r], abs=1e-6)


def test_leave_one_trunk_out_never_trains_on_the_held_out_trunk(tmp_path, tiny_task, small_train, small_test):
    tiny_task.recipe.trunk_epochs = 1
    manifest = run_collect(tiny_task, RunData(small_test, small_train, ALL), 0, CollectSpec(k=6, trunks=3), out=tmp_path).manifest()
    layout = [(n, tuple(s)) for n, s in manifest["layout"]]
    every = flatten(load_file(tmp_path / CHECKPOINTS_FILE), layout)
    coll = Collection.load(tmp_path, hold_out_trunk=1)
    kept = coll.vectors()
    held = every[torch.tensor(manifest["trunk_of"]) == 1]
    assert coll.trunk_of == [0, 0, 2, 2] and len(kept) == 4 and coll.held_out_trunk == 1
    assert torch.cdist(kept, held).min() > 0  # not one held-out vector is among the training rows
    assert coll.accs == [a for a, t in zip(manifest["accs"], manifest["trunk_of"]) if t != 1]
    with pytest.raises(ValueError, match="cannot hold out trunk 5"):
        Collection.load(tmp_path, hold_out_trunk=5)


def test_deep_collection_keeps_bn_statistics_and_stores_float16(tmp_path, small_train, small_test):
    task = get_task("fmnist-convnet-deep")
    task.recipe.epochs, task.recipe.save_every = 1, 3
    manifest = run_collect(task, RunData(small_test, small_train, ALL), 0, CollectSpec(k=4), out=tmp_path).manifest()
    params, base = load_file(tmp_path / CHECKPOINTS_FILE), load_file(tmp_path / BASE_FILE)
    assert all(v.dtype == torch.float16 for v in params.values())
    for stat in ("bn3.running_mean", "bn3.running_var"):  # saved with every checkpoint, never trained
        assert torch.equal(params[stat], base[stat].half()[None].expand(4, -1))
    assert not torch.equal(params["conv3.weight"][0], params["conv3.weight"][-1])
    # the recorded accuracies are those of the stored (rounded) values
    layout = [(n, tuple(s)) for n, s in manifest["layout"]]
    evaluator = BatchedEvaluator(check_architecture(task, base), small_test.normalized(), task.train_layer)
    stacked = stacked_params(flatten(params, layout).float(), layout, base)
    assert accuracies(evaluator.predict_many(stacked), small_test.labels) == pytest.approx(manifest["accs"], abs=1e-6)


def test_train_layer_of_buffers_only_is_refused():
    from pdiff.models.tasks import build_model

    task = get_task("fmnist-convnet")
    task.train_layer = ["bn3.running_mean"]
    with pytest.raises(ValueError, match="at least one trainable parameter"):
        build_model(task)
    task.train_layer = ["bn3.num_batches_tracked", "linear.weight"]
    with pytest.raises(ValueError, match="not in convnet: bn3.num_batches_tracked"):
        build_model(task)
