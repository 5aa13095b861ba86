"""Hugging Face Hub: push a bundle folder with a model card; fetch one by repo id, bundle files only.

Every download (`pull`, `pdiff.load("owner/name")`, the app's bundle box) goes through `fetch_bundle`:
the repo's file list and sizes are read first, only a bundle's files are fetched, and only when their
total is under a limit and bundle.json says it is a pdiff bundle. Downloads land in their own cache
(PDIFF_HUB_CACHE, default ~/.cache/pdiff/hub), kept under a byte cap by evicting the oldest repos.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from pdiff.data.triggers import Trigger
from pdiff.collection.folder import PLAIN_VICTIM
from pdiff.generator.bundle import BUNDLE_JSON, FORMAT, Bundle, BundleError

MB = 1_000_000
MODEL_CARD = "README.md"
DEFAULT_MAX_MB = 200      # one bundle's files; PDIFF_HUB_MAX_MB overrides, 0 means no limit
DEFAULT_CACHE_MB = 2000   # the whole download cache; PDIFF_HUB_CACHE_MB overrides


def model_card(bundle: Bundle, repo_id: str) -> str:
    """A README.md for the bundle's Hub repo, from what bundle.json records."""
    accs, info = bundle.info.originals_acc, bundle.info
    victim = info.victim_reports.get(PLAIN_VICTIM) or {}
    recon = info.training.get("reconstruction", {})
    lines = [
        "---", "library_name: pdiff", "license: mit", "tags:", "- parameter-generation", "- diffusion", "- p-diff",
        f"- {bundle.task.dataset}", "---", "",
        f"# {repo_id}: a pdiff bundle for `{bundle.task.name}`", "",
        "A latent parameter-diffusion bundle (p-diff, Wang et al. 2024): a parameter autoencoder and the EMA "
        f"weights of a latent DDPM that generate the `{bundle.task.arch}` layers below, the K original "
        "checkpoints it was trained on, the base model they fit, and (where present) backdoored victims.", "",
        "| | |", "|---|---|",
        f"| task | `{bundle.task.name}` ({bundle.task.dataset}, {bundle.task.arch}) |",
        f"| generated layers | {', '.join(f'`{n}` {tuple(s)}' for n, s in bundle.layout)} |",
        f"| parameters per set | {bundle.originals.shape[1]} |",
        f"| K originals | {len(bundle.originals)} |",
    ]
    if accs:
        lines.append(f"| originals' test accuracy | min {min(accs):.2f}, mean {sum(accs) / len(accs):.2f}, "
                     f"max {max(accs):.2f} |")
    if recon:
        lines.append(f"| autoencoder reconstruction | mean abs. accuracy change {recon['mean_abs_diff']:.3f} points |")
    if victim:
        lines.append(f"| victim (BadNets, target {victim['trigger']['target']}) | ACC {victim['acc']:.2f}, "
                     f"ASR {victim['asr']:.2f}, RA {victim['ra']:.2f} |")
    for name, v in ((n, v) for n, v in info.victim_reports.items() if n != PLAIN_VICTIM):
        lines.append(f"| victim `{name}` ({Trigger.from_dict(v['trigger']).describe()}) | "
                     f"ACC {v['acc']:.2f}, ASR {v['asr']:.2f}, RA {v['ra']:.2f} |")
    lines += ["", "## Use", "", "```bash",
              f"python -m pdiff evaluate --bundle {repo_id} --target clean --n 100 --json report.json",
              "```", "", "Or choose it in the pdiff app's bundle box. Every weight file is safetensors; "
              "bundle.json records the SHA-256 of each, checked on load.", ""]
    return "\n".join(lines)


def push(bundle_dir: str | Path, repo_id: str, private: bool = False, token: str | None = None) -> str:
    """Upload the bundle folder (checked first) and a generated model card; returns the repo URL."""
    from huggingface_hub import HfApi

    bundle = Bundle.load(bundle_dir)  # refuse to publish a damaged bundle
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        card = Path(tmp) / "README.md"
        card.write_text(model_card(bundle, repo_id))
        api.upload_folder(folder_path=str(bundle_dir), repo_id=repo_id, commit_message="Upload pdiff bundle")
        api.upload_file(path_or_fileobj=str(card), path_in_repo="README.md", repo_id=repo_id,
                        commit_message="Model card")
    return str(url)


def pull(repo_id: str, out: str | Path | None = None, max_bytes: int | None = None) -> Path:
    """Fetch a bundle repo (see fetch_bundle; the cache when offline) and check it loads; copy to `out` if given."""
    path = fetch_bundle(repo_id, max_bytes=max_bytes)
    bundle = Bundle.load(path)
    return bundle.save(out) if out else path  # save() re-writes atomically and re-checks nothing is lost


def default_max_bytes() -> int | None:
    """The per-bundle download limit: PDIFF_HUB_MAX_MB (0: none), else 200 MB."""
    mb = float(os.environ.get("PDIFF_HUB_MAX_MB", DEFAULT_MAX_MB))
    return int(mb * MB) if mb > 0 else None


def cache_dir() -> Path:
    return Path(os.environ.get("PDIFF_HUB_CACHE") or Path.home() / ".cache" / "pdiff" / "hub")


def plan_bundle_download(files: list[tuple[str, int | None]], max_bytes: int | None) -> list[str]:
    """Which of a repo's files (name, size in bytes) to download for a bundle; BundleError if none should be.

    Only top-level bundle.json, *.safetensors and the model card: no pickles, no subfolders, nothing
    else a repo may hold. The total is checked here, before anything is downloaded.
    """
    wanted = [(name, size) for name, size in files
              if "/" not in name and (name in (BUNDLE_JSON, MODEL_CARD) or name.endswith(".safetensors"))]
    if BUNDLE_JSON not in [name for name, _ in wanted]:
        raise BundleError(f"not a pdiff bundle: the repo has no {BUNDLE_JSON}")
    unknown = [name for name, size in wanted if size is None]
    if unknown and max_bytes is not None:
        raise BundleError(f"the Hub reports no size for {unknown[0]}; cannot check the download limit")
    total = sum(size or 0 for _, size in wanted)
    if max_bytes is not None and total > max_bytes:
        raise BundleError(f"the bundle's files are {total / MB:.1f} MB, over the limit of {max_bytes / MB:g} MB")
    return sorted((name for name, _ in wanted), key=lambda name: name != BUNDLE_JSON)  # bundle.json first


def fetch_bundle(repo_id: str, max_bytes: int | None = None, cache: str | Path | None = None) -> Path:
    """Download a bundle repo's files into the pdiff Hub cache and return its folder.

    max_bytes: the limit on the bundle's total size (None: default_max_bytes(), 0: no limit).
    When the Hub cannot be reached, the last complete download of the repo is used, if any.
    """
    from huggingface_hub.utils import validate_repo_id

    max_bytes = default_max_bytes() if max_bytes is None else (max_bytes or None)
    cache = Path(cache or cache_dir())
    try:
        validate_repo_id(repo_id)
    except ValueError:
        raise BundleError(f"{repo_id!r} is not a Hugging Face Hub repo id (owner/name)") from None
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))  # huggingface_hub's cache layout
    try:
        return _fetch(repo_id, max_bytes, cache, repo_dir)
    finally:  # after every attempt: what a refused repo left (its bundle.json) counts against the cap too
        trim_cache(cache, _cache_cap(), keep=repo_dir)


def _fetch(repo_id: str, max_bytes: int | None, cache: Path, repo_dir: Path) -> Path:
    from huggingface_hub import HfApi, hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    try:
        info = HfApi().model_info(repo_id, files_metadata=True)
        plan = plan_bundle_download([(s.rfilename, s.size) for s in info.siblings or []], max_bytes)
        get = lambda name: Path(hf_hub_download(repo_id, name, revision=info.sha, cache_dir=cache))  # noqa: E731
        folder = get(BUNDLE_JSON).parent
        try:  # check bundle.json before any weights arrive; then fetch only the files it lists
            meta = json.loads((folder / BUNDLE_JSON).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            meta = None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("files"), dict):
            raise BundleError(f"not a pdiff bundle: its {BUNDLE_JSON} is not of format {FORMAT!r} with a files list")
        listed = set(meta["files"])
        if listed - set(plan):
            raise BundleError(f"{BUNDLE_JSON} lists {sorted(listed - set(plan))[0]!r}, which is not a bundle "
                              f"file of the repo")
        for name in plan[1:]:
            if name in listed or name == MODEL_CARD:
                get(name)
    except BundleError as e:
        raise BundleError(f"{repo_id!r}: {e}") from None
    except RepositoryNotFoundError:
        raise BundleError(f"no model repo {repo_id!r} on the Hugging Face Hub (or it is private or gated)") from None
    except HfHubHTTPError as e:
        raise BundleError(f"the Hugging Face Hub refused {repo_id!r}: {_first_line(e)}") from None
    except Exception as e:
        if not _unreachable(e):
            raise
        cached = _last_complete(repo_dir)
        if cached is None:
            raise BundleError(f"could not reach the Hugging Face Hub for {repo_id!r}: {_first_line(e)}") from None
        return cached
    # only a complete download is recorded as the repo's main: what the offline fallback uses
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(info.sha)
    os.utime(repo_dir)  # the newest in the cache: evicted last
    return folder


def trim_cache(cache: Path, max_bytes: int, keep: Path | None = None) -> list[Path]:
    """Remove whole repos from the cache, least recently fetched first, until it is under max_bytes."""
    if not cache.is_dir():
        return []
    repos = sorted((p for p in cache.glob("models--*") if p.is_dir()), key=lambda p: p.stat().st_mtime)
    sizes = {p: _size(p) for p in repos}
    total, removed = sum(sizes.values()), []
    for repo in repos:
        if total <= max_bytes:
            break
        if repo != keep:
            shutil.rmtree(repo, ignore_errors=True)
            total -= sizes[repo]
            removed.append(repo)
    return removed


def _cache_cap() -> int:
    return int(float(os.environ.get("PDIFF_HUB_CACHE_MB", DEFAULT_CACHE_MB)) * MB)


def _size(folder: Path) -> int:
    """Bytes of the regular files under folder (the cache's snapshot entries are links to its blobs)."""
    return sum(f.lstat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def _last_complete(repo_dir: Path) -> Path | None:
    ref = repo_dir / "refs" / "main"
    folder = repo_dir / "snapshots" / ref.read_text().strip() if ref.is_file() else None
    return folder if folder is not None and (folder / BUNDLE_JSON).is_file() else None


def _unreachable(e: Exception) -> bool:
    """A connection failure or offline mode, whichever HTTP library this huggingface_hub uses."""
    return isinstance(e, OSError) or type(e).__module__.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3")


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
