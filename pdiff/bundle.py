"""A bundle: everything needed to sample and evaluate, as safetensors files plus bundle.json.

Written atomically (a temporary sibling folder renamed into place), loaded from a local
folder or a Hugging Face Hub repo id, every file checked against its SHA-256.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from pdiff.config import AEConfig, DDPMConfig, Task
from pdiff.diffusion import Diffusion
from pdiff.files import sha256, write_json, write_safetensors
from pdiff.nets import Denoiser, ParamAutoencoder
from pdiff.params import Layout

FORMAT = "pdiff-bundle"
FORMAT_VERSION = 1
BUNDLE_JSON = "bundle.json"
AE_FILE = "autoencoder.safetensors"
DENOISER_FILE = "denoiser_ema.safetensors"
ORIGINALS_FILE = "originals.safetensors"
STATS_FILE = "stats.safetensors"
BASE_FILE = "base.safetensors"
VICTIM_FILE = "victim.safetensors"


class BundleError(ValueError):
    """A bundle is missing, damaged, or of a format this version cannot read."""


@dataclass
class Bundle:
    task: Task
    layout: Layout
    ae_cfg: AEConfig
    ddpm_cfg: DDPMConfig
    autoencoder: ParamAutoencoder
    denoiser: Denoiser              # the EMA weights: the ones sampling uses
    originals: torch.Tensor         # (K, P) raw train_layer vectors, layout order
    norm_mean: torch.Tensor         # (P,) each number's mean over the K originals ((T,) in older bundles)
    norm_std: torch.Tensor          # (T,) one scale per tensor of the layout
    latent_mean: torch.Tensor       # latent standardisation: (C, L) per latent number; a 0-d scalar in older bundles
    latent_std: torch.Tensor
    base_state: dict[str, torch.Tensor]
    victim_state: dict[str, torch.Tensor] | None = None
    meta: dict = field(default_factory=dict)   # accuracies, victim metrics (meta["victims"] for the others), training log
    victims: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # more victims by name, e.g. finetuned-blended
    path: Path | None = None

    @property
    def diffusion(self) -> Diffusion:
        c = self.ddpm_cfg
        return Diffusion(c.timesteps, c.beta_start, c.beta_end)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.layout]

    def save(self, path: str | Path) -> Path:
        """Write the bundle folder atomically; an existing bundle at `path` is replaced whole."""
        path = Path(path)
        if path.exists() and not (path / BUNDLE_JSON).is_file():
            raise BundleError(f"{path} exists and is not a bundle; choose a new folder (nothing was written)")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        try:
            files = {
                AE_FILE: self.autoencoder.state_dict(),
                DENOISER_FILE: self.denoiser.state_dict(),
                ORIGINALS_FILE: {"vectors": self.originals.to(getattr(torch, self.task.recipe.storage_dtype))},
                STATS_FILE: {"norm_mean": self.norm_mean, "norm_std": self.norm_std,
                             "latent_mean": torch.as_tensor(self.latent_mean, dtype=torch.float32),
                              "latent_std": torch.as_tensor(self.latent_std, dtype=torch.float32)},
                BASE_FILE: self.base_state,
            }
            if self.victim_state is not None:
                files[VICTIM_FILE] = self.victim_state
            unknown = sorted(set(self.victims) - set(self.meta.get("victims") or {}))
            if unknown:
                raise BundleError(f"victims without a report in meta['victims']: {', '.join(unknown)}")
            for name, state in self.victims.items():
                files[victim_file(name)] = state
            for name, tensors in files.items():
                write_safetensors(tmp / name, tensors)
            meta = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "task": self.task.to_dict(),
                "layout": [[n, list(s)] for n, s in self.layout], "autoencoder": self.ae_cfg.to_dict(),
                "ddpm": self.ddpm_cfg.to_dict(), **self.meta,
                "files": {name: sha256(tmp / name) for name in sorted(files)},
            }
            write_json(tmp / BUNDLE_JSON, meta)
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                shutil.rmtree(old, ignore_errors=True)
                path.rename(old)
                tmp.rename(path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.path = path
        return path

    @classmethod
    def load(cls, source: str | Path, device: str | torch.device = "cpu") -> "Bundle":
        """Load from a local folder, or from a Hub repo id (`owner/name`) via huggingface_hub."""
        path = resolve(source)
        meta = _read_meta(path)
        task = Task.from_dict(meta["task"])
        layout = [(n, tuple(s)) for n, s in meta["layout"]]
        ae_cfg, ddpm_cfg = AEConfig.from_dict(meta["autoencoder"]), DDPMConfig.from_dict(meta["ddpm"])
        tensors = {name: load_file(path / name) for name in meta["files"]}
        stats, originals = tensors[STATS_FILE], tensors[ORIGINALS_FILE]["vectors"].float()
        ae = ParamAutoencoder(originals.shape[1], ae_cfg)
        denoiser = Denoiser(ae.latent_shape, ddpm_cfg)
        for module, name in ((ae, AE_FILE), (denoiser, DENOISER_FILE)):
            try:
                module.load_state_dict(tensors[name])
            except RuntimeError as e:
                raise BundleError(f"{path / name} does not match bundle.json's settings: {e}") from None
        extra = {k: v for k, v in meta.items()
                 if k not in ("format", "format_version", "task", "layout", "autoencoder", "ddpm", "files")}
        victims = {}
        for name in extra.get("victims") or {}:
            if victim_file(name) not in tensors:
                raise BundleError(f"{path / BUNDLE_JSON} names victim {name!r} but lists no {victim_file(name)}")
            victims[name] = tensors[victim_file(name)]
        return cls(task, layout, ae_cfg, ddpm_cfg, ae.to(device).eval(), denoiser.to(device).eval(), originals,
                   stats["norm_mean"], stats["norm_std"], stats["latent_mean"], stats["latent_std"],
                   tensors[BASE_FILE], tensors.get(VICTIM_FILE), extra, victims=victims, path=path)


def victim_file(name: str) -> str:
    """File of a named extra victim ("finetuned-badnets" -> victim-finetuned-badnets.safetensors)."""
    return f"victim-{name}.safetensors"



def resolve(source: str | Path) -> Path:
    """A local bundle folder as is; otherwise a Hub repo id downloaded with snapshot_download."""
    path = Path(source)
    if path.is_dir():
        return path
    text = str(source)
    if text.count("/") == 1 and not text.startswith((".", "/")) and not path.exists():
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

        try:
            return Path(snapshot_download(repo_id=text))
        except (HfHubHTTPError, LocalEntryNotFoundError, ValueError, OSError) as e:
            raise BundleError(f"could not get bundle {text!r} from the Hugging Face Hub: {e}") from None
    raise BundleError(f"no bundle folder at {source}")


def _read_meta(path: Path) -> dict:
    meta_path = path / BUNDLE_JSON
    if not meta_path.is_file():
        raise BundleError(f"{path} is not a bundle: {BUNDLE_JSON} is missing")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise BundleError(f"{meta_path} is not valid JSON: {e}") from None
    if meta.get("format") != FORMAT:
        raise BundleError(f"{meta_path} is not a pdiff bundle (format {meta.get('format')!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION or version < 1:
        raise BundleError(f"{meta_path} has format_version {version!r}; this pdiff reads versions 1 to {FORMAT_VERSION}"
                          + ("; upgrade pdiff" if isinstance(version, int) and version > FORMAT_VERSION else ""))
    for required in (AE_FILE, DENOISER_FILE, ORIGINALS_FILE, STATS_FILE, BASE_FILE):
        if required not in meta.get("files", {}):
            raise BundleError(f"{meta_path} lists no {required}")
    for name, digest in meta["files"].items():
        file = path / name
        if not file.is_file():
            raise BundleError(f"bundle file missing: {file}")
        if sha256(file) != digest:
            raise BundleError(f"checksum mismatch for {file}: the file changed after the bundle was written")
    return meta
