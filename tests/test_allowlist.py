"""The app's rule for what its bundle box may load (generator.locate with the allowed roots), on real folders and
symlinks."""
import os

import pytest

from pdiff.generator.bundle import BundleError
from pdiff.generator.locate import CHECKPOINTS, shipped_bundles
from pdiff.app.allowlist import allowed_roots
from pdiff.generator.locate import find_bundle


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
        find_bundle(text, roots)
    return str(e.value).replace(repr(text), "X")


def test_shipped_names_repo_ids_and_folders_under_a_root(layout):
    root, mine, _ = layout
    assert find_bundle("fmnist-convnet", [root]) == shipped_bundles()["fmnist-convnet"]
    assert find_bundle(" me/my-bundle ", [root]) == "me/my-bundle"
    assert find_bundle(str(mine), [root]) == mine
    assert find_bundle(str(mine / "sub" / ".."), [root]) == mine
    # a shipped folder names its bundle/, as on the command line
    assert find_bundle(str(CHECKPOINTS / "fmnist-convnet"), [CHECKPOINTS]) == CHECKPOINTS / "fmnist-convnet" / "bundle"


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


def test_a_repo_shaped_value_is_read_from_disk_only_under_a_root(tmp_path, monkeypatch):
    """owner/name is a local folder where one lies under an allowed root (checkpoints/fmnist-convnet, as on the
    command line), and a Hub id anywhere else, whatever the disk holds there."""
    inside = _bundle(tmp_path / "roots" / "owner" / "name")
    _bundle(tmp_path / "elsewhere" / "owner" / "name")
    monkeypatch.chdir(tmp_path / "roots")
    assert find_bundle("owner/name", [tmp_path / "roots"]) == inside
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert find_bundle("owner/name", [tmp_path / "roots"]) == "owner/name"


def test_roots_come_from_the_environment(layout, monkeypatch, tmp_path):
    root, mine, theirs = layout
    monkeypatch.setenv("PDIFF_BUNDLE_ROOTS", os.pathsep.join([str(root), "", str(tmp_path / "nowhere")]))
    assert allowed_roots() == [CHECKPOINTS, root, tmp_path / "nowhere"]
    assert find_bundle(str(mine), allowed_roots()) == mine
    monkeypatch.delenv("PDIFF_BUNDLE_ROOTS")
    assert allowed_roots() == [CHECKPOINTS]
