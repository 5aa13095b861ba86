import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pdiff.models.loading import TargetError, load_state_file, load_target
from pdiff.models.tasks import build_model, get_task

BUNDLE = Path(__file__).resolve().parent.parent / "checkpoints" / "fmnist-convnet" / "bundle"


@pytest.fixture()
def convnet():
    torch.manual_seed(0)
    return build_model(get_task("fmnist-convnet")).eval()


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_refuses_pickle_payload_and_nothing_runs(payload_checkpoint):
    path, marker = payload_checkpoint
    with pytest.raises(TargetError, match="refusing to load .*mknod"):
        load_state_file(path)
    assert not marker.exists()


def test_accepts_state_dict_plain_nested_and_prefixed(tmp_path, convnet):
    task = get_task("fmnist-convnet")
    for name, obj in {"plain.pth": convnet.state_dict(),
                      "nested.pth": {"epoch": 3, "state_dict": convnet.state_dict()},
                      "ddp.pth": {"model": {f"module.{k}": v for k, v in convnet.state_dict().items()}}}.items():
        torch.save(obj, tmp_path / name)
        assert _same(load_target(task, tmp_path / name), convnet), name


def test_accepts_safetensors(tmp_path, convnet):
    save_file(convnet.state_dict(), tmp_path / "m.safetensors")
    assert _same(load_target(get_task("fmnist-convnet"), tmp_path / "m.safetensors"), convnet)


def test_accepts_allowlisted_whole_module(tmp_path, convnet):
    torch.save(convnet, tmp_path / "whole.pth")
    loaded = load_target(get_task("fmnist-convnet"), tmp_path / "whole.pth")
    assert loaded is not convnet and _same(loaded, convnet)


def test_refuses_unknown_module_class(tmp_path):
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Tanh()), tmp_path / "other.pth")
    with pytest.raises(TargetError, match="torch.nn.modules.activation.Tanh"):
        load_state_file(tmp_path / "other.pth")


def test_wrong_architecture_names_mismatched_keys(tmp_path):
    task = get_task("fmnist-convnet")
    wide = build_model(task)
    state = wide.state_dict()
    state["linear.weight"] = torch.zeros(10, 99)
    state.pop("bn3.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "wrong.pth")
    with pytest.raises(TargetError) as err:
        load_target(task, tmp_path / "wrong.pth")
    msg = str(err.value)
    assert "missing: bn3.bias" in msg and "unexpected: extra.weight" in msg and "linear.weight (file (10, 99)" in msg


def test_not_a_checkpoint_says_what_the_file_is(tmp_path):
    with zipfile.ZipFile(tmp_path / "photos.pth", "w") as z:
        z.writestr("README.txt", "holiday photos")
    files = {"notes.pth": (b"not a checkpoint at all\n", r"found text \('not a checkpoint at all'\)"),
             "empty.pth": (b"", "found an empty file"),
             "picture.pth": (b"\x89PNG\r\n\x1a\n" + bytes(64), "found a PNG image"),
             "pickled.pth": (pickle.dumps({"w": [1.0, 2.0]}), "found a Python pickle that is not a PyTorch checkpoint"),
             "pointer.safetensors": (b"version https://git-lfs.github.com/spec/v1\noid sha256:0\n", "found a Git LFS pointer"),
             "photos.pth": (None, r"found a zip archive that is not a PyTorch checkpoint \(it holds README.txt\)")}
    for name, (data, found) in files.items():
        if data is not None:
            (tmp_path / name).write_bytes(data)
        with pytest.raises(TargetError, match=f"{name} is not a model checkpoint: expected a safetensors file or a "
                                              rf"PyTorch state dict \(torch.save\), {found}"):
            load_state_file(tmp_path / name)
    with pytest.raises(TargetError, match="no model file"):
        load_state_file(tmp_path / "absent.pth")


def test_content_not_suffix_decides_the_reader(tmp_path, convnet):
    torch.save(convnet.state_dict(), tmp_path / "zip.safetensors")
    save_file(convnet.state_dict(), tmp_path / "st.pth")
    task = get_task("fmnist-convnet")
    assert _same(load_target(task, tmp_path / "zip.safetensors"), convnet)
    assert _same(load_target(task, tmp_path / "st.pth"), convnet)


def _nonfinite_state(convnet):
    state = {k: v.clone() for k, v in convnet.state_dict().items()}
    state["conv3.weight"].fill_(float("nan"))  # the largest tensor, as in the issue
    state["bn3.running_var"][:5] = float("inf")  # a buffer counts too
    return state


def test_nonfinite_target_refused_by_tensor_name(tmp_path, convnet):
    torch.save(_nonfinite_state(convnet), tmp_path / "nan.pth")
    save_file({k: v.half() if v.is_floating_point() else v for k, v in _nonfinite_state(convnet).items()},
              tmp_path / "nan16.safetensors")
    for name in ("nan.pth", "nan16.safetensors"):
        with pytest.raises(TargetError, match=f"{name} is not a usable target: tensor ") as err:
            load_target(get_task("fmnist-convnet"), tmp_path / name)
        msg = str(err.value)
        assert "'conv3.weight' has 73728 NaN/inf values of 73728" in msg
        assert "'bn3.running_var' has 5 NaN/inf values of 128" in msg and "bn3.weight" not in msg


@pytest.mark.parametrize("name", ["nan.pth", "text.pth"])
def test_cli_evaluate_refuses_bad_target_in_one_line(tmp_path, convnet, capsys, name):
    from pdiff.cli import main

    path = tmp_path / name
    if name == "nan.pth":
        torch.save(_nonfinite_state(convnet), path)
    else:
        path.write_text("this is a text file\n")
    report = tmp_path / "r.json"
    code = main(["evaluate", "--bundle", str(BUNDLE), "--target", str(path), "--n", "2", "--json", str(report)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not report.exists()
    assert err[-1].startswith(f"error: {path} is not a ")
    assert ("'conv3.weight' has 73728 NaN/inf values" if name == "nan.pth" else "found text") in err[-1]
