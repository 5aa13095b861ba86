"""The installed package: `pip install .` into a fresh venv, then run from another folder."""
import os
import shutil
import subprocess
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """A venv (seeing this interpreter's packages, so nothing is downloaded) with pdiff installed from a copy
    of the source: the build writes build/ and *.egg-info beside the sources, never into the checkout."""
    root = tmp_path_factory.mktemp("pkg")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "requirements.txt", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "pdiff", src / "pdiff", ignore=shutil.ignore_patterns("__pycache__"))
    env_dir = root / "venv"
    try:
        # without its own pip and setuptools: the system's (new enough to build a wheel offline) serve
        venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    except Exception as e:  # pragma: no cover - a Python without venv support
        pytest.skip(f"cannot create a virtual environment here: {e}")
    python = env_dir / "bin" / "python"
    out = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(src)],
                         capture_output=True, text=True, cwd=root, env=_env())
    assert out.returncode == 0, out.stderr[-2000:]
    return env_dir


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "PYTHONNOUSERSITE": "1"}


def _run(args, cwd):
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=_env(), timeout=300)


def test_the_installed_package_runs_from_another_folder(installed, tmp_path):
    out = _run([str(installed / "bin" / "pdiff"), "--help"], tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("usage: pdiff ") and "collect" in out.stdout
    out = _run([str(installed / "bin" / "python"), "-m", "pdiff", "collect", "--help"], tmp_path)
    assert out.returncode == 0 and "usage: python -m pdiff collect" in out.stdout
    code = ("import pdiff, pdiff.data, pdiff.sources; print(pdiff.__file__); "
            "print(pdiff.data.ASSETS, pdiff.sources.shipped_bundles(), pdiff.sources.allowed_roots())")
    out = _run([str(installed / "bin" / "python"), "-c", code], tmp_path)
    assert out.returncode == 0, out.stderr
    where, shipped = out.stdout.splitlines()
    # the installed copy, not the checkout; it knows no shipped folders (site-packages/assets is not ours)
    assert Path(where).is_relative_to(installed) and shipped == "None {} []"


def test_an_installed_copy_takes_a_bundle_by_path_and_names_a_missing_one(installed, tmp_path):
    bundle = REPO / "checkpoints" / "fmnist-convnet" / "bundle"
    out = _run([str(installed / "bin" / "pdiff"), "sample", "--bundle", str(bundle), "--n", "2", "--sampler", "ddim",
                "--steps", "2", "--out", str(tmp_path / "s.safetensors")], tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "s.safetensors").is_file()
    out = _run([str(installed / "bin" / "pdiff"), "sample", "--bundle", "./nowhere", "--n", "2",
                "--out", str(tmp_path / "t.safetensors")], tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == "error: no bundle folder at ./nowhere"
