"""BackdoorBench's attack_result.pt: read without numpy's unpickling, its model checked against its own name and the
task, every refusal one line; a hostile twin is refused and its payload never runs."""
import os

import numpy as np
import pytest
import torch
from helpers import BBPreActResNet18

from pdiff.cli import main
from pdiff.models import backdoorbench
from pdiff.models.loading import TargetError, load_state_file, load_target
from pdiff.models.tasks import build_model, get_task


@pytest.fixture(scope="module")
def preact():
    torch.manual_seed(0)
    return BBPreActResNet18().eval()


def _dataset_state(n, poisoned, folder):
    """prepro_cls_DatasetBD_v2.retrieve_state() as BackdoorBench's attacks leave it: poisoned images on disk,
    the container keyed by numpy integers, numpy index and indicator arrays."""
    indicator = np.zeros(n)
    indicator[:poisoned] = 1
    data = {np.int64(i): {"path": f"{folder}/3/{i}.png", "other_info": [0, 3]} for i in range(poisoned)}
    return {"bd_data_container": {"save_folder_path": folder, "data_dict": data, "save_file_format": ".png"},
            "getitem_all": True, "getitem_all_switch": False, "original_index_array": np.arange(n),
            "poison_indicator": indicator, "save_folder_path": folder}


def _attack_result(path, state, model_name="preactresnet18", num_classes=10, img_size=(32, 32, 3), **extra):
    """A file as BackdoorBench's utils/save_load_attack.save_attack_result writes it (torch.save of this dict)."""
    result = {"model_name": model_name, "num_classes": num_classes, "model": state, "data_path": "./data/cifar10",
              "img_size": img_size, "clean_data": "cifar10",
              "bd_train": _dataset_state(100, 10, "record/badnet/bd_train_dataset"),
              "bd_test": _dataset_state(50, 45, "record/badnet/bd_test_dataset"), **extra}
    torch.save({k: v for k, v in result.items() if v is not None}, path)
    return path


def test_a_cifar10_result_loads_against_its_task(tmp_path, preact):
    path = _attack_result(tmp_path / "attack_result.pt", preact.state_dict())
    model = load_target(get_task("cifar10-preact-resnet18"), path)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), preact(x), atol=1e-5)
    # DataParallel's prefix is dropped, as BackdoorBench's own loader does
    _attack_result(tmp_path / "ddp.pt", {f"module.{k}": v for k, v in preact.state_dict().items()})
    assert load_state_file(tmp_path / "ddp.pt").keys() == preact.state_dict().keys()


def test_numpy_arrays_and_scalars_are_read_as_they_were_saved(tmp_path):
    saved = {"c": np.arange(6, dtype=">i4").reshape(2, 3), "f": np.asfortranarray(np.eye(3)[:, :2]),
             "s": np.array(["ab", "c"]), "b": np.array([True, False]), "k": np.int64(7), "x": np.float32(0.5)}
    torch.save(saved, tmp_path / "arrays.pt")
    with torch.serialization.safe_globals(backdoorbench.NUMPY_GLOBALS):
        read = torch.load(tmp_path / "arrays.pt", weights_only=True)
    for key in ("c", "f", "s", "b"):
        assert np.array_equal(read[key].array, saved[key]) and read[key].array.dtype == saved[key].dtype, key
    assert read["k"] == 7 and read["k"].dtype == np.int64 and read["x"] == np.float32(0.5)


def test_a_cifar10_preact_result_given_to_the_fashion_mnist_bundle_says_what_does_not_fit(tmp_path, preact, capsys):
    path = _attack_result(tmp_path / "attack_result.pt", preact.state_dict())
    with pytest.raises(TargetError) as err:
        load_target(get_task("fmnist-convnet"), path)
    assert str(err.value) == (
        f"{path} is a BackdoorBench preactresnet18 (preact-resnet18, 10 classes, 32x32x3 cifar10 input): the "
        "architecture and the input do not fit this bundle's task fmnist-convnet (convnet, 10 classes, 28x28x1 "
        "fashion-mnist input); a bundle of task cifar10-preact-resnet18 takes it")
    with pytest.raises(TargetError, match=r"the number of classes does not fit this bundle's task "
                                          r"cifar100-preact-resnet18 \(preact-resnet18, 100 classes"):
        load_target(get_task("cifar100-preact-resnet18"), path)
    # the command answers in one line about the architecture, not about unpickling
    assert main(["evaluate", "--bundle", "fmnist-convnet", "--target", str(path), "--json",
                 str(tmp_path / "report.json")]) == 2
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert err_lines == [f"error: {err.value}"]
    assert not (tmp_path / "report.json").exists()


class _System:
    """Unpickling this would run a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_the_hostile_twin_is_refused_and_its_payload_never_runs(tmp_path, preact, capsys):
    marker = tmp_path / "created-by-payload"
    path = _attack_result(tmp_path / "attack_result.pt", preact.state_dict(), extra_info=_System(marker))
    with pytest.raises(TargetError) as err:
        load_target(get_task("cifar10-preact-resnet18"), path)
    assert str(err.value).startswith(f"refusing to load {path}: unpickling it would need posix.system, which is not "
                                     "on the allowlist")
    assert main(["evaluate", "--bundle", "fmnist-convnet", "--target", str(path), "--json",
                 str(tmp_path / "report.json")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {err.value}"]
    assert not marker.exists()


@pytest.mark.parametrize("hidden", [np.array([1, "a", None], dtype=object),        # objects would be unpickled
                                    np.zeros(2, dtype=[("a", "f8"), ("b", "i4")])])  # records: fields, flags
def test_arrays_of_objects_or_records_are_refused(tmp_path, preact, hidden):
    path = _attack_result(tmp_path / "attack_result.pt", preact.state_dict(), extra=hidden)
    with pytest.raises(TargetError, match=r"could not be read safely \(torch.load with weights_only=True\): numpy "
                                          r"dtype '[OV]\d+' is refused: only arrays of numbers and strings are read"):
        load_state_file(path)


def test_a_dtype_state_cannot_set_its_own_flags():
    """numpy's dtype setstate takes the flags from the file (a float could claim to hold objects); the stand-in
    rebuilds the dtype from its spec and byte order only."""
    dtype = backdoorbench._Dtype("f8", False, True)
    dtype.__setstate__((3, ">", None, None, None, -1, -1, 63))
    assert dtype.dtype == np.dtype(">f8") and not dtype.dtype.hasobject
    with pytest.raises(Exception, match="fields, a subarray"):
        backdoorbench._Dtype("f8").__setstate__((3, "|", None, ("a",), {"a": None}, 8, 1, 63))


def test_bad_results_are_refused_in_one_line(tmp_path, preact):
    task = get_task("cifar10-preact-resnet18")
    cases = {
        "no-model.pt": ({"state": None}, r"is a BackdoorBench result \(preactresnet18\) without a 'model' entry: "
                                          r"there are no weights to load$"),
        "vgg.pt": ({"model_name": "vgg19_bn"}, r"is a BackdoorBench result of model 'vgg19_bn': no architecture here "
                                                r"matches it; known: preactresnet18 \(as preact-resnet18\)$"),
        "resnet.pt": ({"model_name": "resnet18"}, r"of model 'resnet18': it is torchvision's ResNet-18 with the "
                                                   r"ImageNet stem"),
        "classes.pt": ({"num_classes": 100}, r"is a BackdoorBench result whose model does not fit its own model_name "
                                             r"preactresnet18 \(preact-resnet18, 100 classes\): wrong shape: "
                                             r"linear.weight \(file \(10, 512\), preact-resnet18 \(100, 512\)\), "
                                             r"linear.bias"),
        "convnet.pt": ({"state": build_model(get_task("fmnist-convnet")).state_dict()},
                       r"does not fit its own model_name preactresnet18 \(preact-resnet18, 10 classes\): missing: "
                       r"layer1.0.bn1.weight"),
        "size.pt": ({"img_size": "32"}, r"whose img_size is 32, not \(height, width, channels\)$"),
    }
    for name, (change, message) in cases.items():
        state = change.pop("state", preact.state_dict())
        path = _attack_result(tmp_path / name, state, **change)
        with pytest.raises(TargetError, match=message) as err:
            load_target(task, path)
        assert "\n" not in str(err.value) and str(err.value).startswith(str(path)), name


def test_other_checkpoints_may_carry_numpy_numbers(tmp_path):
    """A training script's checkpoint with numpy metrics beside the weights reads as before, less the refusal."""
    model = build_model(get_task("fmnist-convnet"))
    torch.save({"state_dict": model.state_dict(), "best_acc": np.float64(91.5), "epochs": np.arange(3)},
               tmp_path / "ckpt.pth")
    assert load_state_file(tmp_path / "ckpt.pth").keys() == model.state_dict().keys()
