"""Hub paths, offline (HF_HUB_OFFLINE=1): pdiff's Hub cache laid out as a complete fetch leaves it.

What to download is decided by plan_bundle_download from the file list and sizes a repo reports;
those rules are tested on it directly, with listings shaped like the Hub's.
"""
import os
import shutil

import huggingface_hub.constants as hf_constants
import pytest

from pdiff.generator.bundle import Bundle, BundleError
from pdiff.generator.locate import load_bundle
from pdiff.generator.hub import MB, fetch_bundle, model_card, plan_bundle_download, pull, trim_cache

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch, tiny_bundle):
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("PDIFF_HUB_CACHE", str(tmp_path / "hub"))
    repo = tmp_path / "hub" / "models--me--tiny-bundle"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(tiny_bundle.path, repo / "snapshots" / COMMIT)
    return repo


def test_bundle_loads_by_repo_id_from_the_cache(hub_cache, tiny_bundle):
    bundle = load_bundle("me/tiny-bundle")
    assert bundle.path == hub_cache / "snapshots" / COMMIT
    assert bundle.layout == tiny_bundle.layout


def test_pull_copies_into_a_folder(hub_cache, tmp_path):
    out = pull("me/tiny-bundle", tmp_path / "pulled")
    assert (out / "bundle.json").is_file() and Bundle.load(out).names


def test_unreachable_hub_and_no_cached_copy_is_one_line(hub_cache):
    with pytest.raises(BundleError, match=r"^could not reach the Hugging Face Hub for 'me/absent': [^\n]*$"):
        load_bundle("me/absent")


def test_a_partial_download_is_not_used_offline(hub_cache, tmp_path):
    # a fetch that stopped after bundle.json leaves a snapshot but no refs/main pointing at it
    (hub_cache / "refs" / "main").unlink()
    with pytest.raises(BundleError, match="could not reach the Hugging Face Hub for 'me/tiny-bundle'"):
        fetch_bundle("me/tiny-bundle", cache=tmp_path / "hub")


def test_not_a_repo_id():
    with pytest.raises(BundleError, match="not a Hugging Face Hub repo id"):
        fetch_bundle("me/bad--name")


# what a bundle repo reports: bundle.json, its safetensors, the model card, git's attributes file
BUNDLE_REPO = [(".gitattributes", 1_519), ("README.md", 2_000), ("bundle.json", 3_000),
               ("autoencoder.safetensors", 40 * MB), ("denoiser_ema.safetensors", 60 * MB),
               ("originals.safetensors", 5 * MB), ("stats.safetensors", 10_000), ("base.safetensors", 1 * MB)]


def test_plan_downloads_only_bundle_files_bundle_json_first():
    extra = [("pytorch_model.bin", 10), ("runs/x.safetensors", 10), ("model.ckpt", 10), ("notes.txt", 10)]
    plan = plan_bundle_download(BUNDLE_REPO + extra, 200 * MB)
    assert plan[0] == "bundle.json"
    assert sorted(plan) == sorted(name for name, _ in BUNDLE_REPO if name != ".gitattributes")


def test_plan_refuses_a_repo_without_bundle_json():
    with pytest.raises(BundleError, match="^not a pdiff bundle: the repo has no bundle.json$"):
        plan_bundle_download([("README.md", 10), ("model.safetensors", 10), ("config.json", 10)], 200 * MB)
    with pytest.raises(BundleError, match="not a pdiff bundle"):  # one in a subfolder does not count
        plan_bundle_download([("sub/bundle.json", 10), ("model.safetensors", 10)], 200 * MB)


def test_plan_checks_the_total_size_against_the_limit():
    assert plan_bundle_download(BUNDLE_REPO, 107 * MB)  # 106.015 MB of bundle files
    with pytest.raises(BundleError, match="^the bundle's files are 106.0 MB, over the limit of 100 MB$"):
        plan_bundle_download(BUNDLE_REPO, 100 * MB)
    # files outside the bundle do not count, however large
    assert plan_bundle_download(BUNDLE_REPO + [("pytorch_model.bin", 50_000 * MB)], 107 * MB)
    assert plan_bundle_download(BUNDLE_REPO + [("huge.safetensors", 50_000 * MB)], None)  # no limit
    with pytest.raises(BundleError, match="no size for huge.safetensors"):
        plan_bundle_download(BUNDLE_REPO + [("huge.safetensors", None)], 200 * MB)


def test_default_limit_is_200_mb_and_configurable(monkeypatch):
    from pdiff.generator.hub import default_max_bytes

    monkeypatch.delenv("PDIFF_HUB_MAX_MB", raising=False)
    assert default_max_bytes() == 200 * MB
    monkeypatch.setenv("PDIFF_HUB_MAX_MB", "50")
    assert default_max_bytes() == 50 * MB
    monkeypatch.setenv("PDIFF_HUB_MAX_MB", "0")
    assert default_max_bytes() is None


def _repo(cache, name, size, age_s):
    repo = cache / f"models--me--{name}"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "abc").write_bytes(b"x" * size)
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "snapshots" / COMMIT / "w.safetensors").symlink_to(repo / "blobs" / "abc")  # not counted twice
    t = 1_700_000_000 + 1000 - age_s
    os.utime(repo, (t, t))
    return repo


def test_trim_cache_evicts_the_oldest_repos_first(tmp_path):
    old, middle, new = (_repo(tmp_path, n, 400, age) for n, age in (("old", 300), ("middle", 200), ("new", 100)))
    (tmp_path / ".locks").mkdir()
    assert trim_cache(tmp_path, 1000) == [old]
    assert trim_cache(tmp_path, 1000) == []  # 800 bytes left: under the cap
    assert trim_cache(tmp_path, 300, keep=middle) == [new]  # the repo just fetched stays, even over the cap
    assert sorted(p.name for p in tmp_path.iterdir()) == [".locks", "models--me--middle"]


@pytest.fixture()
def fake_hub(tmp_path, monkeypatch):
    """A local HTTP server answering the two Hub calls fetch_bundle makes, for repo me/repo.

    Yields (files, served): set files[name] = bytes before fetching; served lists what was downloaded.
    """
    import hashlib
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    files, served = {}, []

    class Hub(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code, body=b"", headers=()):
            self.send_response(code)
            for k, v in headers:
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command == "GET":
                self.wfile.write(body)

        def do_GET(self):
            if self.path.startswith("/api/models/me/repo"):  # model_info(files_metadata=True)
                sibs = [{"rfilename": n, "size": len(b)} for n, b in files.items()]
                return self._send(200, json.dumps({"id": "me/repo", "sha": COMMIT, "siblings": sibs}).encode())
            name = self.path.split("?")[0].rsplit("/", 1)[-1]  # /me/repo/resolve/<commit>/<name>
            if not self.path.startswith(f"/me/repo/resolve/{COMMIT}/") or name not in files:
                return self._send(404, headers=[("X-Error-Code", "RepoNotFound")])
            if self.command == "GET":
                served.append(name)
            self._send(200, files[name], [("X-Repo-Commit", COMMIT),
                                          ("ETag", f'"{hashlib.sha256(files[name]).hexdigest()}"')])

        do_HEAD = do_GET

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)  # what HF_ENDPOINT sets at import
    monkeypatch.setattr(hf_constants, "HUGGINGFACE_CO_URL_TEMPLATE",
                        endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("PDIFF_HUB_CACHE", str(tmp_path / "hub"))
    yield files, served
    server.shutdown()


def test_fetch_downloads_the_bundle_files_then_serves_them_offline(fake_hub, tiny_bundle, tmp_path):
    files, served = fake_hub
    files.update({p.name: p.read_bytes() for p in tiny_bundle.path.iterdir()})
    files.update({"README.md": b"# card", "pytorch_model.bin": b"a pickle", "extra.safetensors": b"unlisted"})
    assert load_bundle("me/repo").layout == tiny_bundle.layout
    assert served[0] == "bundle.json"
    assert sorted(served) == sorted([p.name for p in tiny_bundle.path.iterdir()] + ["README.md"])
    hf_constants.HF_HUB_OFFLINE = True  # monkeypatched by the fixture: restored after the test
    assert pull("me/repo") == tmp_path / "hub" / "models--me--repo" / "snapshots" / COMMIT


def test_fetch_refuses_before_the_weights_arrive(fake_hub, tiny_bundle):
    files, served = fake_hub
    files.update({p.name: p.read_bytes() for p in tiny_bundle.path.iterdir()})
    with pytest.raises(BundleError, match=r"^'me/repo': the bundle's files are .* MB, over the limit of 0.001 MB$"):
        fetch_bundle("me/repo", max_bytes=1000)
    assert served == []  # the size came from the file list
    files["bundle.json"] = b'{"format": "something-else", "files": {}}'
    with pytest.raises(BundleError, match="^'me/repo': not a pdiff bundle: its bundle.json is not of format"):
        fetch_bundle("me/repo")
    assert served == ["bundle.json"]
    with pytest.raises(BundleError, match="^no model repo 'me/absent' on the Hugging Face Hub"):
        fetch_bundle("me/absent")


def test_model_card_describes_the_bundle(tiny_bundle):
    card = model_card(tiny_bundle, "me/tiny-bundle")
    assert card.startswith("---\nlibrary_name: pdiff")
    assert "`bn3.weight` (128,)" in card and "K originals | 8" in card and "BadNets" in card
    assert "--bundle me/tiny-bundle" in card
