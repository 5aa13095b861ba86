"""`python -m pdiff heads` and `pdiff.heads_for`: heads for a trunk a head generator never saw, from K shots per class
and an unlabelled pool, on real Fashion-MNIST images: a tiny kit (two random ConvNet trunks lend their heads, a head
generator trained for two steps) and its report; every bad input is one line; the shipped kit is whole."""
import json

import pytest
import torch

import pdiff
from pdiff.cli import main
from pdiff.core.files import write_safetensors
from pdiff.data.datasets import Split, load_split
from pdiff.generator.equivariant import HeadGenConfig, train_heads
from pdiff.generator.headkit import DONORS_FILE, load_kit, save_kit, shipped_kits
from pdiff.models.archs import ConvNet
from pdiff.models.heads import HeadForm
from pdiff.models.tasks import get_task
from pdiff.studies.heads import FeatureCache, Trunk, generator_images, training_examples

FORM = HeadForm("bn3", "linear", 128, 10)
TRAIN, VALIDATION = 1100, 512  # --train-subset, --validation: 588 images to draw from
FLAGS = ["--shots", "2", "--pool", "60", "--n", "2", "--steps", "2", "--train-subset", str(TRAIN), "--test-subset",
         "200", "--validation", str(VALIDATION), "--device", "cpu"]


def _state(seed, **arch):
    torch.manual_seed(seed)
    return ConvNet(**arch).state_dict()


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """A kit in a temporary folder: trunks 1 and 2 (files beside it), a prior generator trained on them."""
    try:
        images, labels = load_split("fashion-mnist", "train")
    except Exception as e:  # pragma: no cover
        pytest.skip(f"Fashion-MNIST train split not installed: {e}")
    train = Split(images[:TRAIN], labels[:TRAIN], "fashion-mnist")
    folder = tmp_path_factory.mktemp("kit")
    files, trunks = {}, []
    for seed in (1, 2):
        files[f"trunk-{seed}"] = folder / f"trunk-{seed}.safetensors"
        write_safetensors(files[f"trunk-{seed}"], _state(seed))
        trunks.append(Trunk(f"trunk-{seed}", _state(seed)))
    cache = FeatureCache(get_task("fmnist-convnet"), FORM)
    cfg = HeadGenConfig(width=8, depth=1, steps=2, batch_size=2, shots=(1, 2), pool=30, pools_per_trunk=1,
                        timesteps=20, refine=True, prior="matched", quality=True)
    images = generator_images(train.labels, 10, 10, seed=0, validation=VALIDATION)
    model = train_heads(training_examples(trunks, cache, train, images), FORM, cfg, torch.Generator().manual_seed(0))
    model.meta.update(images_per_class=10, images_seed=0)
    save_kit(model, get_task("fmnist-convnet"), files, folder / "heads")
    target = folder / "target.safetensors"
    write_safetensors(target, _state(3))
    return folder / "heads", target


def _run(capsys, *argv):
    code = main(["heads", *argv])
    return code, capsys.readouterr()


def test_a_run_reports_the_generated_heads_beside_every_control_with_its_ledger(kit, tmp_path, capsys):
    folder, target = kit
    out = tmp_path / "heads.json"
    code, printed = _run(capsys, "--generator", str(folder), "--target", str(target), "--condition", "trunk=target",
                         "--json", str(out), *FLAGS)
    assert code == 0, printed.err
    report = json.loads(out.read_text())
    sources = report["trunks"]["target"]["k"]["2"]
    controls = {"nearest_mean", "nearest_mean_pool", "probe", "lda", "lda_pool", "self_trained", "stitch",
                "stitch_ensemble", "matched_average"}
    checks = {"unconditional", "swap", "random", "retrieval", "retrieval_matched"}
    assert set(sources) == {"own_head", "generated", "generator_mean"} | controls | checks
    assert sources["generated"]["ledger"] == {"labelled": 20, "unlabelled": 60} and len(sources["generated"]["acc"]) == 2
    assert sources["probe"]["ledger"] == {"labelled": 20, "unlabelled": 0}
    assert sources["stitch_ensemble"]["ledger"] == {"labelled": 0, "unlabelled": 60}
    assert sources["own_head"]["ledger"] == {"labelled": 0, "unlabelled": 0}
    assert report["condition"] == "trunk=target" and report["target"] == str(target)
    assert report["donors"] == ["trunk-1", "trunk-2"] and report["draw"]["excluded_images"] == 200
    assert "stitch_ensemble" in printed.out and "  20 / 60" in printed.out
    assert printed.out.startswith("target; pool 60 unlabelled images")  # a user's trunk is not called held out
    assert report["training_trunk"] is None


def test_a_training_trunk_as_the_target_is_said_and_lends_nothing_to_itself(kit, tmp_path, capsys):
    folder, _ = kit
    out = tmp_path / "heads.json"
    code, printed = _run(capsys, "--generator", str(folder), "--target", str(folder.parent / "trunk-1.safetensors"),
                         "--json", str(out), *FLAGS)
    assert code == 0, printed.err
    report = json.loads(out.read_text())
    assert report["training_trunk"] == "trunk-1" and report["donors"] == ["trunk-2"]


def test_the_api_gives_the_same_report_for_a_module_and_takes_its_own_pool(kit, small_test):
    folder, target = kit
    train = Split(*[t[:TRAIN] for t in load_split("fashion-mnist", "train")], "fashion-mnist")
    module = ConvNet()
    module.load_state_dict(_state(3))
    free = torch.arange(TRAIN - VALIDATION)
    free = free[~torch.isin(free, torch.cat(generator_images(train.labels, 10, 10, 0, VALIDATION)))]
    pool = free[:40]  # the generator's own images are refused: test_bad_input_is_one_line
    report = pdiff.heads_for(module, shots=1, generator=folder, pool=pool, train=train, test=small_test.subset(100),
                             n=2, steps=2, validation=VALIDATION)
    sources = report["trunks"]["target"]["k"]["1"]
    assert sources["generated"]["ledger"] == {"labelled": 10, "unlabelled": 40}
    assert report["draw"]["pool_given"] and "generated" in report.text()


@pytest.mark.parametrize("case", ["width", "shots", "validation", "test-split", "generator-images", "nan-features",
                                  "nan-weights"])
def test_bad_input_is_one_line(kit, tmp_path, capsys, case):
    folder, target = kit
    flags = list(FLAGS)
    if case == "width":  # a ConvNet of width 16 reads 64 features
        target = tmp_path / "narrow.safetensors"
        write_safetensors(target, _state(3, width=16))
        expected = "features at bn3 are 64 wide; the head generator's are 128"
    elif case == "shots":
        flags[1] = "100"
        expected = "--shots 100 is more than the"
    elif case in ("validation", "test-split", "generator-images"):
        pool = tmp_path / "pool.json"
        pool.write_text(json.dumps({"validation": [3, 4, 1000], "test-split": {"split": "test", "indices": [3]},
                                    "generator-images": list(range(588))}[case]))
        flags += ["--pool-indices", str(pool)]
        expected = {"validation": "overlaps the validation split (training images 588..1099) in 1 images",
                    "test-split": "must come from the training split, not the test split",
                    "generator-images": "holds 200 of the images the head generator drew"}[case]
    else:
        state = _state(3)
        key = "bn2.running_var" if case == "nan-features" else "conv1.weight"
        state[key] = -torch.ones_like(state[key]) if case == "nan-features" else state[key] * float("nan")
        target = tmp_path / f"{case}.safetensors"
        write_safetensors(target, state)
        expected = "features at bn3 are not finite" if case == "nan-features" else "is not a usable target"
    code, printed = _run(capsys, "--generator", str(folder), "--target", str(target), "--json",
                         str(tmp_path / "r.json"), *flags)
    assert code == 2 and expected in printed.err
    assert printed.err.count("\n") == 1 and "Traceback" not in printed.err


def test_a_changed_donor_file_is_refused(kit, tmp_path):
    folder, _ = kit
    d = json.loads((folder / DONORS_FILE).read_text())
    d["donors"][0]["sha256"] = "0" * 64
    other = tmp_path / "heads"
    other.mkdir()
    for f in folder.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    d["donors"][0]["file"] = str((folder / d["donors"][0]["file"]).resolve())
    (other / DONORS_FILE).write_text(json.dumps(d))
    with pytest.raises(ValueError, match="is not the file it was trained with"):
        load_kit(other)


def test_the_shipped_kit_is_small_and_whole():
    kits = shipped_kits()
    if "fmnist-convnet-trunks" not in kits:
        pytest.skip("no shipped head generator in this checkout")
    folder = kits["fmnist-convnet-trunks"]
    assert sum(f.stat().st_size for f in folder.iterdir()) < 2_000_000
    kit = load_kit("fmnist-convnet-trunks")  # every donor's SHA-256 checked
    assert [n for n, _ in kit.donors] == kit.model.meta["trunks"] and len(kit.donors) == 40
    assert not {"trunk-16", "trunk-17", "trunk-18", "trunk-19", "trunk-44", "trunk-45", "trunk-46",
                "trunk-47"} & set(kit.model.meta["trunks"])
