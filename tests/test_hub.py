"""Hub paths, offline (HF_HUB_OFFLINE=1): a local cache laid out as snapshot_download leaves it."""
import shutil

import huggingface_hub.constants as hf_constants
import pytest

from pdiff.bundle import Bundle, BundleError
from pdiff.hub import model_card, pull

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch, tiny_bundle):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--me--tiny-bundle"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(tiny_bundle.path, repo / "snapshots" / COMMIT)
    return repo


def test_bundle_loads_by_repo_id_from_the_cache(hub_cache, tiny_bundle):
    bundle = Bundle.load("me/tiny-bundle")
    assert bundle.path == hub_cache / "snapshots" / COMMIT
    assert bundle.layout == tiny_bundle.layout


def test_pull_copies_into_a_folder(hub_cache, tmp_path):
    out = pull("me/tiny-bundle", tmp_path / "pulled")
    assert (out / "bundle.json").is_file() and Bundle.load(out).names


def test_unknown_repo_gets_a_clear_error(hub_cache):
    with pytest.raises(BundleError, match="could not get bundle 'me/absent' from the Hugging Face Hub"):
        Bundle.load("me/absent")


def test_model_card_describes_the_bundle(tiny_bundle):
    card = model_card(tiny_bundle, "me/tiny-bundle")
    assert card.startswith("---\nlibrary_name: pdiff")
    assert "`bn3.weight` (128,)" in card and "K originals | 8" in card and "BadNets" in card
    assert "--bundle me/tiny-bundle" in card
