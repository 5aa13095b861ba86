"""The app's rule for what its bundle box may load, on real folders and symlinks."""
import os

import pytest

from pdiff.bundle import BundleError
from pdiff.sources import CHECKPOINTS, allowed_roots, app_source, shipped_bundles


def _bundle(folder):
    folder.mkdir(parents=True)
    (folder / "bundle.json").write_text("{}")
    return folder


@pytest.fixture()
def layout(tmp_path):
    """roots/ (allowed) holding a bundle, and outside/ (not allowed) holding another."""
    root = tmp_path / "roots"
    return root, _bundle(root / "mine"), _bundle(tmp_path / "outside" / "theirs")


def _refusal(text, roots):
    with pytest.raises(BundleError) as e:
        app_source(text, shipped_bundles(), roots)
    return str(e.value).replace(repr(text), "X")


def test_shipped_names_repo_ids_and_folders_under_a_root(layout):
    root, mine, _ = layout
    assert app_source("fmnist-convnet", shipped_bundles(), [root]) == CHECKPOINTS / "fmnist-convnet" / "bundle"
    assert app_source(" me/my-bundle ", {}, [root]) == "me/my-bundle"
    assert app_source(str(mine), {}, [root]) == mine
    assert app_source(str(mine / "sub" / ".."), {}, [root]) == mine


def test_paths_outside_the_roots_get_one_message_whether_they_exist_or_not(layout, tmp_path):
    root, mine, theirs = layout
    os.symlink(theirs, root / "link")
    (root / "empty").mkdir()
    refused = {
        "missing": _refusal(str(tmp_path / "absent"), [root]),
        "outside": _refusal(str(theirs), [root]),
        "dot-dot": _refusal(f"{root}/../outside/theirs", [root]),
        "relative dot-dot": _refusal(os.path.relpath(theirs), [root]),
        "symlink out": _refusal(str(root / "link"), [root]),
        "not a bundle": _refusal(str(root / "empty"), [root]),
        "missing inside": _refusal(str(root / "absent"), [root]),
        "system folder": _refusal("/etc", [root]),
        "NUL byte": _refusal("/etc\0", [root]),
    }
    assert set(refused.values()) == {"no shipped bundle or allowed bundle folder named X"}, refused


def test_a_repo_shaped_value_is_never_read_from_disk(tmp_path, monkeypatch):
    _bundle(tmp_path / "owner" / "name")
    monkeypatch.chdir(tmp_path)
    assert app_source("owner/name", {}, [tmp_path]) == "owner/name"  # a Hub id, though ./owner/name exists


def test_roots_come_from_the_environment(layout, monkeypatch, tmp_path):
    root, mine, theirs = layout
    monkeypatch.setenv("PDIFF_BUNDLE_ROOTS", os.pathsep.join([str(root), "", str(tmp_path / "nowhere")]))
    assert allowed_roots() == [CHECKPOINTS, root, tmp_path / "nowhere"]
    assert app_source(str(mine), {}, allowed_roots()) == mine
    monkeypatch.delenv("PDIFF_BUNDLE_ROOTS")
    assert allowed_roots() == [CHECKPOINTS]
