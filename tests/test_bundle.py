import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pdiff.generator.bundle import _RESERVED, BundleInfo, BUNDLE_JSON, DENOISER_FILE, Bundle, BundleError
from pdiff.core.config import AEConfig, DDPMConfig
from pdiff.generator.sampling import sample
from pdiff.collection.folder import Collection
from pdiff.generator.training import ema_decay, train_bundle


@pytest.mark.parametrize("sampler, steps", [("ddim", 10),
                                            pytest.param("ddpm", None, marks=pytest.mark.slow)])  # all T steps
def test_roundtrip_gives_identical_samples(tiny_bundle, tmp_path, sampler, steps):
    again = Bundle.load(tiny_bundle.save(tmp_path / "copy"))
    a = sample(tiny_bundle, 6, sampler, steps, torch.Generator().manual_seed(3))
    b = sample(again, 6, sampler, steps, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert a.shape == (6, tiny_bundle.originals.shape[1])
    assert not torch.equal(a, sample(again, 6, sampler, steps, torch.Generator().manual_seed(4)))
    assert again.task == tiny_bundle.task and again.layout == tiny_bundle.layout


def test_bundle_json_records_what_the_design_asks(tiny_bundle):
    meta = json.loads((tiny_bundle.path / BUNDLE_JSON).read_text())
    assert meta["format_version"] == 4 and meta["task"]["name"] == "fmnist-convnet" and "condition" not in meta
    assert "train_spec" not in meta and tiny_bundle.info.train_spec is None  # trained without a spec: unknown
    assert meta["arch_args"] == {"in_channels": 1, "num_classes": 10} and meta["pdiff_version"]
    assert [n for n, _ in meta["layout"]] == tiny_bundle.task.train_layer
    assert len(meta["originals_acc"]) == 8 and meta["victim"]["trigger"]["name"] == "badnets"
    assert meta["victim"]["asr"] == tiny_bundle.victim_report("scratch-badnets")["asr"]
    assert set(meta["files"]) >= {"autoencoder.safetensors", DENOISER_FILE, "originals.safetensors",
                                  "stats.safetensors", "base.safetensors", "victim.safetensors"}
    assert all(len(h) == 64 for h in meta["files"].values())


def test_ema_weights_are_saved_and_used(tiny_collection, tmp_path):
    # decay 0: the "EMA" is the trained network's last weights; at 0.999 (warmed up) it is an average that differs
    # from them. The bundle holds, saves and samples from the EMA
    def trained(decay):
        return train_bundle(Collection.load(tiny_collection), AEConfig(channels=[16, 32], steps=5),
                            DDPMConfig(channels=32, blocks=2, steps=30, ema_decay=decay), seed=0)

    raw, averaged = trained(0.0), trained(0.999)
    saved = load_file(averaged.save(tmp_path / "b") / DENOISER_FILE)
    assert all(torch.equal(saved[k], v) for k, v in averaged.denoiser.state_dict().items())
    assert not torch.equal(saved["out.2.weight"], raw.denoiser.state_dict()["out.2.weight"])
    loaded = Bundle.load(tmp_path / "b")
    z, t = torch.randn(4, *loaded.autoencoder.latent_shape), torch.tensor([10, 200, 500, 999])
    assert torch.equal(loaded.denoiser(z, t), averaged.denoiser(z, t))


def test_the_ema_is_warmed_up_so_a_short_run_forgets_its_zero_start():
    assert ema_decay(0, 0.999) == pytest.approx(0.1) and ema_decay(8990, 0.999) == 0.999
    assert all(ema_decay(t, 0.999) <= ema_decay(t + 1, 0.999) for t in range(10_000))
    # the share of the initial (zero-output) weights left after the API example's 600 steps: 55 % at a fixed
    # 0.999, next to nothing with the warm-up
    assert 0.999 ** 600 == pytest.approx(0.549, abs=1e-3)
    assert math.prod(ema_decay(t, 0.999) for t in range(600)) < 1e-6


def _corrupt(bundle_path, tmp_path, how):
    dst = tmp_path / how
    shutil.copytree(bundle_path, dst)
    meta = json.loads((dst / BUNDLE_JSON).read_text())
    if how == "missing":
        (dst / DENOISER_FILE).unlink()
    elif how == "checksum":
        data = bytearray((dst / DENOISER_FILE).read_bytes())
        data[-1] ^= 1
        (dst / DENOISER_FILE).write_bytes(bytes(data))
    elif how == "newer":
        meta["format_version"] = 99
    elif how == "unknown":
        meta["format"] = "something-else"
    (dst / BUNDLE_JSON).write_text(json.dumps(meta))
    return dst


@pytest.mark.parametrize("how,message", [("missing", "bundle file missing: .*denoiser_ema"),
                                         ("checksum", "checksum mismatch for .*denoiser_ema"),
                                         ("newer", "format_version 99; .*upgrade pdiff"),
                                         ("unknown", "not a pdiff bundle")])
def test_damaged_bundles_get_one_clear_error(tiny_bundle, tmp_path, how, message):
    with pytest.raises(BundleError, match=message):
        Bundle.load(_corrupt(tiny_bundle.path, tmp_path, how))


@pytest.mark.parametrize("name", ["../outside.safetensors", "../absent.safetensors", "/etc/hostname"])
def test_bundle_json_cannot_name_files_outside_its_folder(tiny_bundle, tmp_path, name):
    # a bundle.json from the Hub is a stranger's: the same refusal whether the named file exists or not
    dst = tmp_path / "bundle"
    shutil.copytree(tiny_bundle.path, dst)
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    meta = json.loads((dst / BUNDLE_JSON).read_text())
    meta["files"][name] = "0" * 64
    (dst / BUNDLE_JSON).write_text(json.dumps(meta))
    with pytest.raises(BundleError, match=f"lists '{name}', which is not a file name in the bundle folder"):
        Bundle.load(dst)


def test_failed_save_leaves_no_half_bundle(tiny_bundle, tmp_path, monkeypatch):
    import pdiff.generator.bundle as bundle_mod

    calls = {"n": 0}
    real = bundle_mod.write_safetensors

    def fail_third(path, tensors, metadata=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        real(path, tensors, metadata)

    monkeypatch.setattr(bundle_mod, "write_safetensors", fail_third)
    with pytest.raises(OSError, match="disk full"):
        tiny_bundle.save(tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # neither the bundle nor its temporary folder


def test_loads_a_snapshot_style_folder(tiny_bundle, tmp_path):
    # snapshot_download returns a plain folder of the repo's files; a path like that loads as is
    snap = tmp_path / "models--me--bundle" / "snapshots" / "abc123"
    shutil.copytree(tiny_bundle.path, snap)
    assert Bundle.load(snap).layout == tiny_bundle.layout


def test_non_bundle_paths(tmp_path):
    with pytest.raises(BundleError, match="no bundle folder"):
        Bundle.load(tmp_path / "absent")
    with pytest.raises(BundleError, match="bundle.json is missing"):
        Bundle.load(tmp_path)


def test_save_refuses_to_replace_a_folder_that_is_not_a_bundle(tiny_bundle, tmp_path):
    precious = tmp_path / "collection"
    precious.mkdir()
    (precious / "checkpoints.safetensors").write_bytes(b"precious")
    with pytest.raises(BundleError, match="exists and is not a bundle"):
        tiny_bundle.save(precious)
    assert (precious / "checkpoints.safetensors").read_bytes() == b"precious"


def test_named_victims_travel_with_the_bundle(tiny_bundle, tiny_collection):
    from pdiff.measure.targets import resolve_target

    assert list(tiny_bundle.victims) == ["scratch-badnets", "finetuned-blended"]
    assert tiny_bundle.info.victim_reports["finetuned-blended"]["trigger"]["name"] == "blended"
    for name in ("finetuned", "finetuned-blended"):  # a kind means its victim
        target = resolve_target(tiny_bundle, name)
        assert target.name == "finetuned-blended" and target.trigger.name == "blended"
    on_disk = load_file(tiny_collection / "victim-finetuned-blended.safetensors")
    assert all(torch.equal(target.state[k], on_disk[k]) for k in on_disk)
    assert resolve_target(tiny_bundle, "scratch").trigger.name == "badnets"
    with pytest.raises(BundleError, match="no target 'finetunde'.*clean, victim, finetuned-blended"):
        resolve_target(tiny_bundle, "finetunde")


def test_fold_is_chosen_from_the_vector_length_and_recorded(tiny_bundle):
    from pdiff.core.config import auto_fold

    assert auto_fold(1546) == 16 and auto_fold(75530) == 512  # the two ConvNet tasks
    assert all(-(-p // auto_fold(p)) <= 256 for p in (10, 4096, 4097, 10**6))
    assert tiny_bundle.ae_cfg.fold == 16
    assert json.loads((tiny_bundle.path / BUNDLE_JSON).read_text())["autoencoder"]["fold"] == 16


def test_a_format_1_bundle_loads_through_the_upgrade(tiny_bundle, tmp_path):
    dst = shutil.copytree(tiny_bundle.path, tmp_path / "old")
    meta = json.loads((dst / BUNDLE_JSON).read_text())
    for key in ("arch_args", "pdiff_version"):
        del meta[key]
    meta["format_version"] = 1
    (dst / BUNDLE_JSON).write_text(json.dumps(meta))
    old = Bundle.load(dst)
    assert torch.equal(sample(old, 3, "ddim", 4, torch.Generator().manual_seed(0)),
                       sample(tiny_bundle, 3, "ddim", 4, torch.Generator().manual_seed(0)))
    again = json.loads((old.save(tmp_path / "new") / BUNDLE_JSON).read_text())  # saved as the current format
    assert again["format_version"] == 4 and again["arch_args"] == {"in_channels": 1, "num_classes": 10}


def test_the_shipped_bundles_load_without_a_spec():
    """Bundles written before format 4 hold no TrainSpec: theirs is unknown (None), and nothing else changes; one
    rebuilt since (the trunk bundle) holds the spec it was built with."""
    for name in ("fmnist-convnet", "fmnist-convnet-budget", "fmnist-convnet-trunks"):
        meta = json.loads((Path("checkpoints") / name / "bundle" / BUNDLE_JSON).read_text())
        bundle = Bundle.load(Path("checkpoints") / name / "bundle")
        assert meta["format_version"] in (2, 3, 4) and bundle.digest
        assert (bundle.info.train_spec is None) == (meta["format_version"] < 4)


def test_what_bundle_json_records_reads_as_typed_info_and_writes_back_as_it_was():
    for name in ("fmnist-convnet", "fmnist-convnet-budget", "fmnist-convnet-trunks"):
        meta = json.loads((Path("checkpoints") / name / "bundle" / BUNDLE_JSON).read_text())
        recorded = {k: v for k, v in meta.items() if k not in _RESERVED}
        info = BundleInfo.from_json(recorded)
        assert info.originals_acc == recorded["originals_acc"] and info.trunk_of == recorded["trunk_of"]
        assert info.victim_reports.get("scratch-badnets") == recorded["victim"] and not info.extra  # all known
        written = info.to_json()
        assert {k: written[k] for k in recorded} == recorded  # saved again, bundle.json says the same
        assert set(written) - set(recorded) <= {"held_out_trunks"}  # before format 4: none were held out
    budget = Bundle.load(Path("checkpoints") / "fmnist-convnet-budget" / "bundle")
    assert budget.budget_donor == budget.info.trained_on and budget.budget_donor["images"] == budget.train_size == 3000
    assert budget.clean_model()[1] == budget.info.references["clean-model"]["train_size"] == 55000


def test_latents_are_standardised_per_latent_number(tiny_bundle, tmp_path):
    norm = tiny_bundle.normaliser
    assert tuple(norm.latent_mean.shape) == tuple(norm.latent_std.shape) == tuple(tiny_bundle.autoencoder.latent_shape)
    assert tiny_bundle.ddpm_cfg.latent_scale == "per_dim"
    # bundles written before hold one scalar pair (and no latent_scale in bundle.json): they still load and sample
    old = dataclasses.replace(tiny_bundle, normaliser=dataclasses.replace(norm, latent_mean=norm.latent_mean.mean(),
                                                                          latent_std=norm.latent_std.mean()))
    meta_path = old.save(tmp_path / "old") / BUNDLE_JSON
    meta = json.loads(meta_path.read_text())
    del meta["ddpm"]["latent_scale"]
    meta_path.write_text(json.dumps(meta))
    again = Bundle.load(tmp_path / "old")
    assert again.normaliser.latent_std.ndim == 0 and again.ddpm_cfg.latent_scale == "scalar"
    out = sample(again, 3, "ddim", 5, torch.Generator().manual_seed(0))
    assert out.shape == (3, tiny_bundle.originals.shape[1]) and torch.isfinite(out).all()


def test_behaviour_loss_scores_function_not_parameters(tiny_collection):
    from pdiff.core.params import norm_stats, normalize
    from pdiff.generator.training import BehaviourLoss

    coll = Collection.load(tiny_collection)
    mean, std = norm_stats(coll.params, coll.layout)
    x = normalize(coll.vectors(), mean, std, coll.layout)
    loss = BehaviourLoss(coll, mean, std, n_images=64)
    idx = torch.arange(len(x))
    assert loss.targets.shape == (len(x), 64, 10)
    assert loss(x, idx).item() < 1e-8                             # each original against itself
    assert loss(x.roll(1, 0), idx).item() > 0.01                  # against another original
    bundle = train_bundle(coll, AEConfig(channels=[16, 32], steps=5, behaviour_weight=1.0, behaviour_images=32),
                          DDPMConfig(channels=32, blocks=2, steps=5), seed=0)
    assert bundle.ae_cfg.behaviour_weight == 1.0


def test_victims_only_replaces_the_victims_and_keeps_the_generator(tiny_bundle, tiny_collection, tmp_path):
    """`train --victims-only` after victims are rebuilt: the bundle's victims and reports follow the collection,
    the generator's files stay byte for byte."""


    from pdiff import cli
    from pdiff.collection.folder import victim_files

    coll, bundle_dir = tmp_path / "coll", tmp_path / "bundle"
    shutil.copytree(tiny_collection, coll)
    tiny_bundle.save(bundle_dir)
    weights, report = victim_files("finetuned-blended")
    (coll / weights).unlink()
    (coll / report).unlink()
    before = (bundle_dir / "denoiser_ema.safetensors").read_bytes()
    assert cli.main(["train", "--collection", str(coll), "--out", str(bundle_dir), "--victims-only"]) == 0
    again = Bundle.load(bundle_dir)
    assert set(again.victims) == {"scratch-badnets"}
    assert list(again.info.victim_reports) == ["scratch-badnets"]
    assert (bundle_dir / "denoiser_ema.safetensors").read_bytes() == before
    assert not (bundle_dir / weights).exists()
