"""Hugging Face Hub: push a bundle folder with a model card, pull one by repo id."""
from __future__ import annotations

import tempfile
from pathlib import Path

from pdiff.bundle import Bundle, BundleError


def model_card(bundle: Bundle, repo_id: str) -> str:
    """A README.md for the bundle's Hub repo, from what bundle.json records."""
    accs = bundle.meta.get("originals_acc") or []
    victim = bundle.meta.get("victim") or {}
    training = bundle.meta.get("training", {})
    recon = training.get("reconstruction", {})
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
    for name, v in (bundle.meta.get("victims") or {}).items():
        lines.append(f"| victim `{name}` ({v['trigger']['kind']}, target {v['trigger']['target']}) | "
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


def pull(repo_id: str, out: str | Path | None = None) -> Path:
    """Download a bundle repo (or find it in the local cache when offline) and check it loads."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo_id=repo_id))
    except (HfHubHTTPError, LocalEntryNotFoundError, ValueError, OSError) as e:
        raise BundleError(f"could not get {repo_id!r} from the Hugging Face Hub: {e}") from None
    bundle = Bundle.load(path)
    return bundle.save(out) if out else path  # save() re-writes atomically and re-checks nothing is lost
