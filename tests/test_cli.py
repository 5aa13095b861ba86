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
    assert out.returncode == 2 and "Traceback" not in out.stderr and "no bundle folder" in out.stderr
