import pytest
import torch
from safetensors.torch import save_file

from pdiff.targets import TargetError, load_state_file, load_target
from pdiff.tasks import build_model, get_task


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


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint at all")
    with pytest.raises(TargetError):
        load_state_file(tmp_path / "junk.pth")
    with pytest.raises(TargetError, match="no model file"):
        load_state_file(tmp_path / "absent.pth")
