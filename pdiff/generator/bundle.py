"""A bundle: everything needed to sample and evaluate, as safetensors files plus bundle.json.

Written atomically (a temporary sibling folder renamed into place) and loaded from a folder, every file checked
against its SHA-256. Names (shipped, Hub ids) are generator.locate's; downloads generator.hub's.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

from pdiff.collection.folder import BASE_FILE, PLAIN_VICTIM, victim_files
from pdiff.core.config import AEConfig, DDPMConfig, Task
from pdiff.core.settings import TrainSpec
from pdiff.data.datasets import Split
from pdiff.generator.conditions import Conditions
from pdiff.generator.diffusion import Diffusion
from pdiff.core.files import sha256, write_json, write_safetensors
from pdiff.generator.nets import Denoiser, ParamAutoencoder
from pdiff.core.params import Layout, comparison_space, denormalize, layout_from_json, layout_to_json, normalize
from pdiff.core.version import __version__
from pdiff.models.tasks import arch_args as default_arch_args

FORMAT = "pdiff-bundle"
# 2: the pdiff version and the architecture's constructor arguments; 3: an optional condition; 4: the TrainSpec the
# bundle was built with (`train_spec`; absent where it was trained without one: generator.training.train_bundle)
FORMAT_VERSION = 4
_RESERVED = ("format", "format_version", "task", "layout", "autoencoder", "ddpm", "files", "pdiff_version", "arch_args",
             "condition")
BUNDLE_JSON = "bundle.json"
AE_FILE = "autoencoder.safetensors"
DENOISER_FILE = "denoiser_ema.safetensors"
ORIGINALS_FILE = "originals.safetensors"
STATS_FILE = "stats.safetensors"
CONDITIONS_FILE = "conditions.safetensors"  # a conditional bundle: every original's condition (and a probe set)


def reference_file(name: str) -> str:
    """The file a reference model is kept in."""
    return f"reference-{name}.safetensors"


class BundleError(ValueError):
    """A bundle is missing, damaged, or of a format this version cannot read."""


@dataclass
class BundleInfo:
    """Where a bundle came from, typed: what bundle.json records beside the weights' settings, under the keys it has
    always had (`from_json` / `to_json`; keys pdiff does not know are kept in `extra` and written back)."""
    originals_acc: list[float] = field(default_factory=list)  # each original's test accuracy (percent)
    base_acc: float | None = None                             # the base model's
    collection_seed: int | None = None
    # the ledger of every method that uses the clean model behind the checkpoints: the images it was trained on, and
    # for a budget donor's bundle the clean budget it was drawn from (bundle.json's `collection`)
    train_size: int | None = None
    trained_on: dict | None = None
    trunk_of: list[int] = field(default_factory=list)          # each original's trunk
    held_out_trunk: int | None = None                         # the trunk a leave-one-trunk-out collection left out
    held_out_trunks: list[int] = field(default_factory=list)  # trunks the spec held out of training (the trunk study)
    training: dict = field(default_factory=dict)  # seed, device, timings, final losses, the reconstruction check
    # victims' reports by name (PLAIN_VICTIM, the scratch BadNets one: bundle.json's `victim`; the others `victims`)
    victim_reports: dict[str, dict] = field(default_factory=dict)
    references: dict[str, dict] = field(default_factory=dict)  # the reference models' reports (train_size, acc)
    # how it was built (generator.recipe.build_bundle); None for a bundle trained without a spec or written before
    # format 4: unknown
    train_spec: TrainSpec | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, meta: dict) -> "BundleInfo":
        """From bundle.json's keys beside the reserved ones (every format version alike)."""
        meta = dict(meta)
        collection = meta.pop("collection", None) or {}
        plain, others = meta.pop("victim", None), meta.pop("victims", None) or {}
        known = [f for f in cls.__dataclass_fields__ if f not in ("train_size", "trained_on", "victim_reports", "extra")]
        given = {k: meta.pop(k) for k in known if k in meta}
        if given.get("train_spec") is not None:
            given["train_spec"] = TrainSpec.from_dict(given["train_spec"])
        return cls(**{k: v for k, v in given.items() if v is not None}, train_size=collection.get("train_size"),
                   trained_on=collection.get("trained_on"),
                   victim_reports={**({PLAIN_VICTIM: plain} if plain else {}), **others}, extra=meta)

    def to_json(self) -> dict:
        """bundle.json's keys for this record, in the order a bundle trained now has them."""
        collection = {k: v for k, v in (("train_size", self.train_size), ("trained_on", self.trained_on))
                      if v is not None}
        return {"originals_acc": self.originals_acc, "base_acc": self.base_acc, "collection_seed": self.collection_seed,
                "collection": collection, "trunk_of": self.trunk_of, "held_out_trunk": self.held_out_trunk,
                "held_out_trunks": self.held_out_trunks, "training": self.training,
                "victim": self.victim_reports.get(PLAIN_VICTIM),
                "victims": {k: v for k, v in self.victim_reports.items() if k != PLAIN_VICTIM},
                **({"references": self.references} if self.references else {}),
                **({"train_spec": self.train_spec.to_dict()} if self.train_spec is not None else {}), **self.extra}


@dataclass
class Normaliser:
    """How a bundle standardises what it learns: parameter vectors by each number's mean and each tensor's std over
    the K originals (p-diff step 3), the autoencoder's latents per latent number (what the DDPM sees)."""
    mean: torch.Tensor         # (P,) each number's mean over the K originals ((T,) in older bundles)
    std: torch.Tensor          # (T,) one scale per tensor of the layout
    latent_mean: torch.Tensor  # (C, L) per latent number; a 0-d scalar in older bundles
    latent_std: torch.Tensor

    def normalise(self, vectors: torch.Tensor, layout: Layout) -> torch.Tensor:
        return normalize(vectors, self.mean, self.std, layout)

    def denormalise(self, vectors: torch.Tensor, layout: Layout) -> torch.Tensor:
        return denormalize(vectors, self.mean, self.std, layout)

    def comparison_space(self, vectors: torch.Tensor, layout: Layout) -> torch.Tensor:
        """The normalised vectors distances and the t-SNE compare (params.comparison_space)."""
        return comparison_space(vectors, self.mean, self.std, layout)

    def latents_out(self, z: torch.Tensor) -> torch.Tensor:
        """Sampled latents back on the autoencoder's scale."""
        return z * torch.as_tensor(self.latent_std, device=z.device) + torch.as_tensor(self.latent_mean, device=z.device)

    def tensors(self) -> dict[str, torch.Tensor]:
        """As stats.safetensors holds them."""
        return {"norm_mean": self.mean, "norm_std": self.std,
                "latent_mean": torch.as_tensor(self.latent_mean, dtype=torch.float32),
                "latent_std": torch.as_tensor(self.latent_std, dtype=torch.float32)}


@dataclass(kw_only=True)
class Bundle:
    """A trained generator as named components (the autoencoder, the EMA denoiser, the normaliser, the conditions it
    was trained on) beside its settings, its originals and clean model, the victims and reference models kept with
    it, and where it came from (`info`, typed)."""
    task: Task
    layout: Layout
    ae_cfg: AEConfig
    ddpm_cfg: DDPMConfig
    autoencoder: ParamAutoencoder
    denoiser: Denoiser              # the EMA weights: the ones sampling uses
    normaliser: Normaliser
    originals: torch.Tensor         # (K, P) raw train_layer vectors, layout order
    base_state: dict[str, torch.Tensor]
    info: BundleInfo = field(default_factory=BundleInfo)  # accuracies, the ledger, trunks, reports, training log
    # victims by name (collection.victim_name), e.g. scratch-badnets, finetuned-blended; each with its report in
    # info.victim_reports
    victims: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    # clean models kept beside a bundle for the controls, by name, each with its report in info.references
    # (train_size, acc): a budget donor's bundle keeps the full clean model as "clean-model"
    references: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    conditions: Conditions | None = None   # what a conditional bundle was trained on (generator.conditions)
    path: Path | None = None
    # the model's constructor arguments as bundle.json recorded them (None: derived from the task on save); kept
    # so that a bundle of a task of your own, loaded without its model, saves again
    arch_args: dict | None = None
    # SHA-256 of bundle.json, which lists every file's checksum: the bundle's identity (None until saved or loaded)
    digest: str | None = None

    @property
    def diffusion(self) -> Diffusion:
        c = self.ddpm_cfg
        return Diffusion(c.timesteps, c.beta_start, c.beta_end)

    @property
    def names(self) -> list[str]:
        return [n for n, _ in self.layout]

    @property
    def victim_state(self) -> dict[str, torch.Tensor] | None:
        """The scratch BadNets victim, the target called `victim`."""
        return self.victims.get(PLAIN_VICTIM)

    @property
    def train_size(self) -> int | None:
        """The images the clean model behind the checkpoints was trained on (None: a bundle that did not record it)."""
        return self.info.train_size

    @property
    def budget_donor(self) -> dict | None:
        """A budget donor's bundle: what it records of the clean budget its model was trained on; else None."""
        return self.info.trained_on

    def clean_model(self) -> tuple[dict[str, torch.Tensor], int | None]:
        """The clean model the `clean-model` control is, and the images it was trained on: the reference model a
        budget donor's bundle keeps, else the bundle's own base."""
        if "clean-model" in self.references:
            return self.references["clean-model"], self.info.references["clean-model"].get("train_size")
        return self.base_state, self.train_size

    def victim_report(self, name: str) -> dict:
        return self.info.victim_reports[name]

    def set_victims(self, victims: dict) -> None:
        """Hold these victims ({name: collection.Victim}) with their reports, in place of any before."""
        self.victims = {name: v.state for name, v in victims.items()}
        self.info.victim_reports = {name: v.report for name, v in victims.items()}

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
                STATS_FILE: self.normaliser.tensors(),
                BASE_FILE: self.base_state,
            }
            unknown = sorted(set(self.victims) - set(self.info.victim_reports))
            if unknown:
                raise BundleError(f"victims without a report in info: {', '.join(unknown)}")
            for name, state in self.victims.items():
                files[victim_files(name)[0]] = state
            unknown = sorted(set(self.references) - set(self.info.references))
            if unknown:
                raise BundleError(f"reference models without a report in info: {', '.join(unknown)}")
            for name, state in self.references.items():
                files[reference_file(name)] = state
            c = self.conditions
            if c is not None:
                files[CONDITIONS_FILE] = {"values": c.values, "mean": c.mean, "std": c.std,
                                          **({"probe_images": c.probe.images, "probe_labels": c.probe.labels}
                                             if c.probe is not None else {})}
            for name, tensors in files.items():
                write_safetensors(tmp / name, tensors)
            meta = {
                "format": FORMAT, "format_version": FORMAT_VERSION, "pdiff_version": __version__,
                "task": self.task.to_dict(),
                "arch_args": self.arch_args if self.arch_args is not None else default_arch_args(self.task),
                "layout": layout_to_json(self.layout), "autoencoder": self.ae_cfg.to_dict(),
                "ddpm": self.ddpm_cfg.to_dict(), **{k: v for k, v in self.info.to_json().items() if k not in _RESERVED},
                **({"condition": {"kind": c.kind, **c.meta}} if c is not None else {}),
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
        self.path, self.digest = path, sha256(path / BUNDLE_JSON)
        return path

    @classmethod
    def load(cls, source: str | Path, device: str | torch.device = "cpu") -> "Bundle":
        """Load a bundle folder (a shipped name or a Hub id: generator.locate.load_bundle, or pdiff.load)."""
        path = Path(source)
        if not path.is_dir():
            raise BundleError(f"no bundle folder at {source} (pdiff.load and --bundle also take shipped names "
                              "and Hub repo ids)")
        meta = _read_meta(path)
        task = Task.from_dict(meta["task"])
        layout = layout_from_json(meta["layout"])
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
        info = BundleInfo.from_json({k: v for k, v in meta.items() if k not in _RESERVED})
        victims = {}
        for name in info.victim_reports:
            file = victim_files(name)[0]
            if file not in tensors:
                raise BundleError(f"{path / BUNDLE_JSON} names victim {name!r} but lists no {file}")
            victims[name] = tensors[file]
        conditions = None
        if meta.get("condition"):
            if CONDITIONS_FILE not in tensors:
                raise BundleError(f"{path / BUNDLE_JSON} has a condition but lists no {CONDITIONS_FILE}")
            c, recorded = tensors[CONDITIONS_FILE], dict(meta["condition"])
            probe = (Split(c["probe_images"], c["probe_labels"], task.dataset) if "probe_images" in c else None)
            conditions = Conditions(recorded.pop("kind"), c["values"], c["mean"], c["std"], recorded, probe)
        references = {}
        for name in info.references:
            if reference_file(name) not in tensors:
                raise BundleError(f"{path / BUNDLE_JSON} names reference model {name!r} but lists no {reference_file(name)}")
            references[name] = tensors[reference_file(name)]
        normaliser = Normaliser(stats["norm_mean"], stats["norm_std"], stats["latent_mean"], stats["latent_std"])
        return cls(task=task, layout=layout, ae_cfg=ae_cfg, ddpm_cfg=ddpm_cfg, autoencoder=ae.to(device).eval(),
                   denoiser=denoiser.to(device).eval(), normaliser=normaliser, originals=originals,
                   base_state=tensors[BASE_FILE], info=info, victims=victims, path=path, arch_args=meta["arch_args"],
                   digest=sha256(path / BUNDLE_JSON), references=references, conditions=conditions)


def upgrade(meta: dict) -> dict:
    """bundle.json of an older format version, brought to FORMAT_VERSION in memory (the files stay as they are).
    1 -> 2: the architecture's constructor arguments, which format 1 implied by the task's dataset. 2 -> 3: nothing
    to add (format 3 may hold a condition; a format 2 bundle is unconditional). 3 -> 4: nothing to add (format 4 may
    hold the TrainSpec it was built with; an older bundle's is unknown: Bundle.info.train_spec None)."""
    meta = dict(meta)
    if meta["format_version"] == 1:
        meta.update(format_version=2, pdiff_version=meta.get("pdiff_version", "before 0.2 (format 1)"),
                    arch_args=default_arch_args(Task.from_dict(meta["task"])))
    if meta["format_version"] == 2:
        meta["format_version"] = 3
    if meta["format_version"] == 3:
        meta["format_version"] = 4
    return meta


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
    meta = upgrade(meta)
    for required in (AE_FILE, DENOISER_FILE, ORIGINALS_FILE, STATS_FILE, BASE_FILE):
        if required not in meta.get("files", {}):
            raise BundleError(f"{meta_path} lists no {required}")
    for name, digest in meta["files"].items():
        if name != Path(name).name or name in ("", ".", ".."):  # a bundle.json from the Hub must not name other paths
            raise BundleError(f"{meta_path} lists {name!r}, which is not a file name in the bundle folder")
        file = path / name
        if not file.is_file():
            raise BundleError(f"bundle file missing: {file}")
        if sha256(file) != digest:
            raise BundleError(f"checksum mismatch for {file}: the file changed after the bundle was written")
    return meta
