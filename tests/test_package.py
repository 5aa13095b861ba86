"""The installed package: built and installed by the interpreter that runs the tests (pip install --target, its own
setuptools and dependencies; nothing downloaded), then run from another folder."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.install


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """A site-packages folder holding pdiff built from a copy of the source (the build writes build/ and *.egg-info
    beside the copy, never into the checkout)."""
    root = tmp_path_factory.mktemp("pkg")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "requirements.txt", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "pdiff", src / "pdiff", ignore=shutil.ignore_patterns("__pycache__"))
    target = root / "site-packages"  # an installed copy knows itself by this folder name (core.paths)
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(src)], capture_output=True, text=True, cwd=root, env=_env())
    assert out.returncode == 0, out.stderr[-2000:]
    return target


def _env(site: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    return {**env, "PYTHONNOUSERSITE": "1", **({"PYTHONPATH": str(site)} if site else {})}


def _run(site: Path, args: list[str], cwd: Path):
    return subprocess.run(args, capture_output=True, text=True, cwd=cwd, env=_env(site), timeout=300)


def test_the_installed_package_runs_from_another_folder(installed, tmp_path):
    out = _run(installed, [str(installed / "bin" / "pdiff"), "--help"], tmp_path)
    assert out.returncode == 0 and out.stdout.startswith("usage: pdiff ") and "collect" in out.stdout
    out = _run(installed, [sys.executable, "-m", "pdiff", "collect", "--help"], tmp_path)
    assert out.returncode == 0 and "usage: python -m pdiff collect" in out.stdout
    code = ("import pdiff, pdiff.data.datasets as d, pdiff.generator.locate as l, pdiff.app.allowlist as a; "
            "print(pdiff.__file__); print(d.ASSETS, l.shipped_bundles(), a.allowed_roots())")
    out = _run(installed, [sys.executable, "-c", code], tmp_path)
    assert out.returncode == 0, out.stderr
    where, shipped = out.stdout.splitlines()
    # the installed copy, not the checkout; it knows no shipped folders (site-packages/assets is not ours)
    assert Path(where).is_relative_to(installed) and shipped == "None {} []"
    # every stage package was found and installed, none left behind
    packages = sorted(p.parent.relative_to(installed).as_posix() for p in (installed / "pdiff").rglob("__init__.py"))
    assert packages == sorted(p.parent.relative_to(REPO).as_posix() for p in (REPO / "pdiff").rglob("__init__.py"))


def test_an_installed_copy_takes_a_bundle_by_path_and_names_a_missing_one(installed, tmp_path):
    bundle = REPO / "checkpoints" / "fmnist-convnet" / "bundle"
    out = _run(installed, [str(installed / "bin" / "pdiff"), "sample", "--bundle", str(bundle), "--n", "2",
                           "--sampler", "ddim", "--steps", "2", "--out", str(tmp_path / "s.safetensors")], tmp_path)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "s.safetensors").is_file()
    out = _run(installed, [str(installed / "bin" / "pdiff"), "sample", "--bundle", "./nowhere", "--n", "2",
                           "--out", str(tmp_path / "t.safetensors")], tmp_path)
    assert out.returncode == 2 and out.stderr.strip() == ("error: no bundle './nowhere': give a shipped name (none in an "
                                                          "installed copy), a bundle folder or a Hub repo id "
                                                          "(owner/name)")


def test_the_example_runs_from_an_installed_copy(installed, tmp_path):
    """examples/own_model.py copied away from the checkout: the only pdiff it can import is the installed one."""
    script = tmp_path / "own_model.py"
    shutil.copy(REPO / "examples" / "own_model.py", script)
    env = {**_env(installed), "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=env,
                         timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    assert any(line.startswith("summary: ") for line in out.stdout.splitlines())
