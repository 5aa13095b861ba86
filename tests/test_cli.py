import subprocess
import sys

import pytest

from pdiff.cli import build_parser

COMMANDS = sorted(build_parser()._subparsers._group_actions[0].choices)


def _run(*args):
    return subprocess.run([sys.executable, "-m", "pdiff", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_commands():
    out = _run("--help")
    assert out.returncode == 0
    for cmd in COMMANDS:
        assert cmd in out.stdout


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(command):
    out = _run(command, "--help")
    assert out.returncode == 0 and "usage: python -m pdiff " + command in out.stdout


def test_bad_input_is_one_line_not_a_traceback(tmp_path):
    out = _run("collect", "--out", str(tmp_path / "x"), "--train-layer", "nope.weight")
    assert out.returncode == 2
    assert out.stderr.strip() == "error: train_layer names not in convnet: nope.weight"
    out = _run("sample", "--bundle", str(tmp_path / "absent"), "--out", str(tmp_path / "s.safetensors"))
    assert out.returncode == 2 and "Traceback" not in out.stderr and "error: no bundle '" in out.stderr


BUNDLE = "checkpoints/fmnist-convnet/bundle"


def test_sample_is_reproducible_from_the_command_line(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    paths = []
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        out = _run("sample", "--bundle", BUNDLE, "--n", "5", "--sampler", "ddim", "--steps", "10", "--seed", seed,
                   "--out", str(tmp_path / f"{name}.safetensors"), "--device", "cpu")
        assert out.returncode == 0, out.stderr
        paths.append(load_file(tmp_path / f"{name}.safetensors"))
    a, b, c = paths
    assert set(a) == {"bn3.weight", "bn3.bias", "linear.weight", "linear.bias"} and a["linear.weight"].shape == (5, 10, 128)
    with safe_open(tmp_path / "a.safetensors", "pt") as f:  # the layout order travels in the metadata
        assert [n for n, _ in json.loads(f.metadata()["layout"])] == ["bn3.weight", "bn3.bias", "linear.weight",
                                                                         "linear.bias"]
    assert all((a[k] == b[k]).all() for k in a) and not (a["bn3.bias"] == c["bn3.bias"]).all()


def test_evaluate_writes_the_report(tmp_path):
    import json

    out = _run("evaluate", "--bundle", BUNDLE, "--target", "victim", "--n", "4", "--sampler", "ddim", "--steps", "5",
               "--no-tsne", "--test-subset", "500", "--json", str(tmp_path / "r.json"), "--device", "cpu")
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    assert len(report["sources"]["generated"]["der"]) == 4 and report["target"]["asr"] > 90  # the victim's backdoor
    assert "average:" in out.stdout and "median:" in out.stdout
    assert report["validation"]["size"] == 5000  # the default hold-out
    # a small training subset: the default hold-out shrinks to half of it instead of failing
    out = _run("evaluate", "--bundle", BUNDLE, "--target", "victim", "--n", "2", "--sampler", "ddim", "--steps", "3",
               "--no-tsne", "--test-subset", "300", "--train-subset", "1000", "--json", str(tmp_path / "s.json"),
               "--device", "cpu")
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "s.json").read_text())["validation"]["size"] == 500


def test_transfer_and_trunk_options_refuse_bad_values_in_one_line(tmp_path):
    out = _run("transfer", "--bundle", BUNDLE, "--victim", "finetunde", "--methods", "generated", "--json",
               str(tmp_path / "t.json"), "--test-subset", "100")
    assert out.returncode == 2 and out.stderr.startswith("error: no target 'finetunde' in this bundle")
    assert "finetuned-badnets, finetuned-blended" in out.stderr and not (tmp_path / "t.json").exists()
    out = _run("train", "--collection", "checkpoints/fmnist-convnet", "--hold-out-trunk", "1", "--out",
               str(tmp_path / "b"))
    assert out.returncode == 2 and out.stderr.strip() == "error: cannot hold out trunk 1: the collection's trunks are [0]"
    out = _run("loto", "--bundle", BUNDLE, "--collection", "checkpoints/fmnist-convnet", "--json", str(tmp_path / "l.json"))
    assert out.returncode == 2 and "trained on every trunk" in out.stderr


def test_transfer_help_names_the_controls_defences_and_budget():
    out = _run("transfer", "--help")
    text = " ".join(out.stdout.split())
    assert out.returncode == 0 and "--clean-budget" in text and "--defence-epochs" in text
    for name in ("clean-layers", "average", "finetune", "reinit", "ft", "fp", "clp"):
        assert name in text


def test_transfer_measures_controls_and_defences_and_refuses_bad_budgets(tmp_path):
    import json

    common = ["transfer", "--bundle", BUNDLE, "--victim", "finetuned", "--n", "2", "--sampler", "ddim", "--steps", "3",
              "--test-subset", "300", "--train-subset", "1000", "--device", "cpu"]
    out = _run(*common, "--methods", "nope,ft,CLP", "--json", str(tmp_path / "x.json"))
    assert out.returncode == 2 and out.stderr.strip().startswith("error: unknown methods ['nope', 'CLP']")
    out = _run(*common, "--methods", "ft", "--clean-budget", "0.1", "--json", str(tmp_path / "x.json"))
    assert out.returncode == 2 and out.stderr.strip() == ("error: clean budget 0.1 is 100 images, under one batch "
                                                          "(128); raise it")
    out = _run(*common, "--methods", "fp", "--clean-budget", "3", "--json", str(tmp_path / "x.json"))
    assert out.returncode == 2 and out.stderr.strip() == ("error: data.budget must be a share of the training split "
                                                          "between 0 and 1, got 3.0")
    out = _run(*common, "--methods", "generated,clean-layers,average,ft,clp", "--clean-budget", "0.2",
               "--defence-epochs", "1", "--json", str(tmp_path / "t.json"))
    assert out.returncode == 0, out.stderr
    report = json.loads((tmp_path / "t.json").read_text())
    assert list(report["sources"]) == ["generated", "clean-layers", "average", "ft", "clp"]
    assert report["sources"]["ft"]["clean_images"] == 200 and report["defence_settings"]["epochs"] == 1
    assert "200 images" in out.stdout and "clean-layers" in out.stdout
