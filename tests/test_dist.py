"""torchrun on this machine: two processes on gloo, one thread each, against one process. The documented commands
run as written; collection and evaluation come out identical to one process; training writes one bundle; bad input
and a rank that cannot join end in one clear line with nothing written."""
import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from pdiff.core.dist import gather, mine

pytestmark = pytest.mark.slow  # each case starts torchrun and two interpreters
SMALL = ["--train-subset", "1024", "--test-subset", "300", "--device", "cpu"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}


def torchrun(*args: str, ranks: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
                           "-m", "pdiff", *args], capture_output=True, text=True, env=_env(), timeout=timeout)


def one_process(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pdiff", *args], capture_output=True, text=True, env=_env(),
                          timeout=600)


def test_without_torchrun_a_process_is_rank_0_of_1():
    assert mine(5) == [0, 1, 2, 3, 4] and gather(["a", "b"], 2) == ["a", "b"]


def test_collect_on_two_ranks_equals_one_process(tmp_path):
    common = ["collect", "--trunks", "4", "--trunk-mode", "reinit", "--epochs", "1", "--k", "8", "--save-every", "3",
              "--seed", "5", *SMALL]
    two = torchrun(*common, "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    one = one_process(*common, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (load_file(tmp_path / name / "checkpoints.safetensors") for name in ("one", "two"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for trunk in ("base", "trunk-1", "trunk-2", "trunk-3"):
        x, y = (load_file(tmp_path / name / f"{trunk}.safetensors") for name in ("one", "two"))
        assert all(torch.equal(x[k], y[k]) for k in x), trunk
    ma, mb = (json.loads((tmp_path / name / "manifest.json").read_text()) for name in ("one", "two"))
    assert ma["accs"] == mb["accs"] and ma["trunk_of"] == mb["trunk_of"] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert (ma["ranks"], mb["ranks"]) == (1, 2)


def test_evaluate_on_two_ranks_equals_one_process(tmp_path):
    common = ["evaluate", "--bundle", "fmnist-convnet", "--target", "victim", "--sets", "130", "--sampler", "ddim",
              "--steps", "5", "--no-tsne", "--validation", "0", "--bn-images", "0", *SMALL]
    two = torchrun(*common, "--json", str(tmp_path / "two.json"))
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("report written to") == 1  # rank 0 alone writes and prints
    one = one_process(*common, "--json", str(tmp_path / "one.json"))
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("one", "two"))
    for key in a:
        if key != "timings_s":
            assert a[key] == b[key], key


def test_train_on_two_ranks_writes_one_bundle(tmp_path, tiny_collection):
    two = torchrun("train", "--collection", str(tiny_collection), "--out", str(tmp_path / "bundle"), "--ae-steps", "20",
                   "--ddpm-steps", "20", "--behaviour-weight", "0", "--no-recon-eval", "--device", "cpu")
    assert two.returncode == 0, two.stderr[-3000:]
    meta = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert meta["training"]["ranks"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]  # no second writer's leftovers


def test_too_few_trunks_and_a_taken_folder_end_in_one_line_and_write_nothing(tmp_path):
    out = torchrun("collect", "--trunks", "1", "--epochs", "1", "--k", "4", *SMALL, "--out", str(tmp_path / "c"))
    assert out.returncode != 0 and not (tmp_path / "c").exists()
    assert "error (rank 0 of 2): 1 trunks cannot be spread over 2 ranks" in out.stderr
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "manifest.json").write_text("{}")
    out = one_process("collect", "--k", "4", *SMALL, "--out", str(tmp_path / "taken"))
    assert out.returncode == 2 and out.stderr.strip().startswith("error: ") and "already holds a collection" in out.stderr
    assert (tmp_path / "taken" / "manifest.json").read_text() == "{}"


def test_a_rank_that_cannot_join_says_so_in_one_line(tmp_path):
    from pdiff.app.ui import free_port

    env = {**_env(), "WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port()), "PDIFF_DIST_TIMEOUT_S": "3"}
    out = subprocess.run([sys.executable, "-m", "pdiff", "sample", "--bundle", "fmnist-convnet", "--sets", "2",
                          "--out", str(tmp_path / "s.safetensors")], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2 and not (tmp_path / "s.safetensors").exists()
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: rank 1 could not join the process group at 127.0.0.1:")
