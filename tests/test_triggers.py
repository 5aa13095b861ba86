"""Triggers as data: presets equal the first built-in triggers, specs are checked field by field, victims are
poisoned after the flip, and no report scores a model against a trigger it does not name."""
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from pdiff.data.triggers import (PRESETS, Trigger, apply_trigger, load_trigger, poison, preset, 
                            trigger_from_fields)
from pdiff.collection.folder import load_victims, victim_name
from pdiff.data.datasets import DATASETS
from pdiff.studies.report import familiar_lines
from pdiff.measure.targets import ASSUMED, GIVEN

import helpers


def old_apply_trigger(images, kind="badnets", size=3, alpha=0.1, pattern_seed=0):
    """pdiff 0.2.0's apply_trigger, copied as it was (its Trigger's fields as arguments)."""
    if kind == "badnets":
        out = images.clone()
        out[..., -size:, -size:] = 255
        return out
    pattern = torch.randint(0, 256, tuple(images.shape[1:]), generator=torch.Generator().manual_seed(pattern_seed),
                            dtype=torch.uint8).float()
    mixed = (1 - alpha) * images.float() + alpha * pattern
    return mixed.round().clamp(0, 255).to(torch.uint8)


def test_presets_equal_the_old_triggers_pixel_for_pixel(fmnist_test):
    gray = fmnist_test.images[:256]
    color = torch.randint(0, 256, (64, 3, 32, 32), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    for images in (gray, color):
        assert torch.equal(apply_trigger(images, preset("badnets")), old_apply_trigger(images))
        assert torch.equal(apply_trigger(images, preset("blended")), old_apply_trigger(images, "blended"))
        assert torch.equal(apply_trigger(images, Trigger()), old_apply_trigger(images))  # the default is BadNets
    # the first victim reports' dicts read back as the same triggers
    old = {"kind": "blended", "size": 3, "target": 0, "rate": 0.1, "alpha": 0.25, "pattern_seed": 4}
    assert torch.equal(apply_trigger(gray, Trigger.from_dict(old)), old_apply_trigger(gray, "blended", 3, 0.25, 4))
    old = {"kind": "badnets", "size": 5, "target": 2, "rate": 0.1}
    assert torch.equal(apply_trigger(gray, Trigger.from_dict(old)), old_apply_trigger(gray, "badnets", 5))
    assert preset("badnets").to_dict() == {"kind": "patch", "name": "badnets", "target": 0, "rate": 0.1,
                                           "corner": "bottom-right", "size": 3, "value": 255}


def test_shipped_victim_reports_read_as_the_presets():
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent / "checkpoints" / "fmnist-convnet"
    reports = {p.name: json.loads(p.read_text()) for p in root.glob("victim*.json")}
    assert len(reports) == 4
    for name, report in reports.items():
        trigger = Trigger.from_dict(report["trigger"])
        assert trigger.name == ("blended" if "blended" in name else "badnets")
        assert trigger.stamp() == PRESETS[trigger.name] and (trigger.target, trigger.rate) == (0, 0.1)


@pytest.mark.parametrize("spec, field", [
    ({"kind": "patch", "corner": "centre"}, "trigger.corner"),
    ({"kind": "blend", "opacity": 1.5}, "trigger.opacity"),
    ({"kind": "blend", "opacity": -0.1}, "trigger.opacity"),
    ({"kind": "patch", "image": np.zeros((28, 28)).tolist(), "mask": np.full((28, 28), 2).tolist()}, "trigger.mask"),
    ({"kind": "patch", "image": np.zeros((28, 28)).tolist()}, "trigger.mask"),
    ({"kind": "blend", "image": np.full((28, 28), 300).tolist()}, "trigger.image"),
    ({"kind": "patch", "target": -1}, "trigger.target"),
    ({"kind": "patch", "size": 0}, "trigger.size"),
    ({"kind": "patch", "value": 256}, "trigger.value"),
    ({"kind": "patch", "rate": 1.0}, "trigger.rate"),
    ({"kind": "sig"}, "trigger.kind"),
    ({"kind": "patch", "name": "a b"}, "trigger.name"),
    ({"kind": "patch", "size": 4, "name": "badnets"}, "trigger.name"),  # a preset's name for another trigger
    ({"kind": "patch", "colour": 3}, "colour"),
])
def test_each_bad_field_is_refused_with_its_name(spec, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        Trigger.from_dict(spec)


@pytest.mark.parametrize("spec, field, message", [
    ({"kind": "blend", "image": np.zeros((32, 32)).tolist()}, "image", r"shape \(32, 32\).*1x28x28"),
    ({"kind": "patch", "image": np.zeros((3, 28, 28)).tolist(), "mask": np.ones((28, 28)).tolist()}, "image",
     r"shape \(3, 28, 28\)"),
    ({"kind": "patch", "size": 29}, "size", "larger than the 28x28 images"),
    ({"kind": "patch", "target": 10}, "target", "out of range: fashion-mnist has classes 0 to 9"),
])
def test_fields_that_depend_on_the_dataset_are_checked_against_it(spec, field, message, fmnist_test):
    trigger = Trigger.from_dict(spec)  # fine on its own
    with pytest.raises(ValueError, match=rf"trigger\.{field}.*{message}"):
        trigger.check("fashion-mnist")
    if field in ("image", "size"):  # applying it to images of another size is refused the same way
        with pytest.raises(ValueError, match=rf"trigger\.{field}"):
            apply_trigger(fmnist_test.images[:2], trigger)


def test_json_round_trip_with_images_inline_and_in_files(tmp_path, fmnist_test):
    from PIL import Image

    image = np.zeros((28, 28), dtype=np.uint8)
    image[2:6, 2:6] = 200
    mask = (image > 0).astype(np.uint8)
    np.save(tmp_path / "mask.npy", mask)
    Image.fromarray(image).save(tmp_path / "image.png")
    (tmp_path / "logo.json").write_text(json.dumps({"kind": "patch", "image": "image.png", "mask": "mask.npy",
                                                    "target": 4, "rate": 0.05}))
    from_files = load_trigger(tmp_path / "logo.json")
    assert from_files.name == "logo" and from_files.target == 4 and np.array_equal(from_files.mask, mask)
    inline = Trigger.from_dict(json.loads(json.dumps(from_files.to_dict())))  # what a victim report carries
    assert inline == from_files
    out = apply_trigger(fmnist_test.images[:8], inline)
    assert (out[:, 0, 2:6, 2:6] == 200).all() and torch.equal(out[:, :, 6:], fmnist_test.images[:8, :, 6:])
    for name in PRESETS:
        assert Trigger.from_dict(json.loads(json.dumps(preset(name).to_dict()))) == preset(name)
    blend = Trigger(kind="blend", opacity=0.5, image=np.full((28, 28), 100).tolist(), name="grey")
    assert Trigger.from_dict(blend.to_dict()) == blend
    black = torch.zeros(1, 1, 28, 28, dtype=torch.uint8)
    assert torch.equal(apply_trigger(black, blend), torch.full_like(black, 50))
    with pytest.raises(ValueError, match="neither a preset"):
        load_trigger(tmp_path / "absent.json")
    (tmp_path / "bad.json").write_text(json.dumps({"kind": "blend", "image": "pattern.jpg"}))
    with pytest.raises(ValueError, match=r"trigger\.image: no file"):
        load_trigger(tmp_path / "bad.json")


def test_corners_and_names():
    images = torch.zeros(1, 1, 8, 8, dtype=torch.uint8)
    where = {"top-left": (0, 0), "top-right": (0, 6), "bottom-left": (6, 0), "bottom-right": (6, 6)}
    for corner, (r, c) in where.items():
        out = apply_trigger(images, Trigger(kind="patch", corner=corner, size=2, value=9))[0, 0]
        assert (out[r:r + 2, c:c + 2] == 9).all() and out.sum() == 4 * 9
    assert victim_name("scratch", preset("badnets")) == "scratch-badnets"
    assert victim_name("scratch", preset("badnets", rate=0.05)) == "scratch-badnets-5pct"
    assert victim_name("finetuned", preset("blended", rate=0.01, target=3)) == "finetuned-blended-t3-1pct"
    assert Trigger(kind="patch", corner="top-left").name == "patch"  # not the preset: named after its kind
    assert trigger_from_fields("patch", 3, 3, "bottom-right") == preset("badnets", target=3)
    assert trigger_from_fields("assumed") is None and trigger_from_fields("none") == "none"


def _images_seen(model, dataset: str) -> list[torch.Tensor]:
    """Every batch the model is trained on, back in uint8 pixels (a forward pre-hook on the real model)."""
    spec, seen = DATASETS[dataset], []
    mean, std = torch.tensor(spec.mean).view(1, -1, 1, 1), torch.tensor(spec.std).view(1, -1, 1, 1)

    def keep(module, args):
        seen.append(((args[0] * std + mean) * 255).round().clamp(0, 255).to(torch.uint8))

    model.register_forward_pre_hook(keep)
    return seen


def test_the_trigger_is_stamped_after_the_flip_where_it_says(small_train):
    from pdiff.models.fit import Objective, Schedule, fit, init_model
    from pdiff.models.tasks import get_task
    from pdiff.collection.victims import poisoned_training

    task = get_task("fmnist-convnet")
    train = small_train.subset(512)
    trigger = preset("badnets", rate=0.25)

    def corners(seen):  # images with the full 3x3 white square at the bottom right / bottom left
        batches = torch.cat(seen)
        br = (batches[..., -3:, -3:] == 255).flatten(1).all(1)
        bl = (batches[..., -3:, :3] == 255).flatten(1).all(1)
        return int(br.sum()), int(bl.sum())

    g = torch.Generator().manual_seed(0)
    poisoned, stamp = poisoned_training(train, trigger, g)
    model = init_model(task, g)
    seen = _images_seen(model, train.dataset)
    fit(model, poisoned, Schedule.of(task.recipe, epochs=1), g, objective=Objective(batch_hook=stamp))
    assert corners(seen) == (128, 0)  # every poisoned image, flipped or not, has it bottom-right; none mirrored
    assert (poisoned.labels != train.labels).sum() > 100 and torch.equal(poisoned.images, train.images)

    # poisoning before the flip (pdiff 0.2.0) shows the model the mirrored trigger about half of the time
    g = torch.Generator().manual_seed(0)
    images, labels, _ = poison(train.images, train.labels, trigger, g)
    model = init_model(task, g)
    seen = _images_seen(model, train.dataset)
    fit(model, type(train)(images, labels, train.dataset), Schedule.of(task.recipe, epochs=1), g)
    br, bl = corners(seen)
    assert br + bl == 128 and 40 < bl < 88


def test_an_uploaded_target_names_its_trigger(tiny_bundle, small_test, tmp_path):
    path = tmp_path / "upload.pth"
    torch.save(tiny_bundle.victim_state, path)
    kwargs = dict(n=2, sampler="ddim", steps=2, test=small_test, tsne=False, baselines=False)
    report, _ = helpers.report(tiny_bundle, str(path), **kwargs)
    t = report["target"]
    assert t["trigger_source"] == ASSUMED == "assumed (no victim report beside the file)"
    assert t["trigger"]["name"] == "badnets" and "asr" in t
    assert "trigger badnets: 3x3 square of 255 at bottom-right, target class 0, 10% poisoned (assumed (no victim " \
           "report beside the file))" in familiar_lines(report)
    given, _ = helpers.report(tiny_bundle, str(path), trigger=preset("blended", target=3), **kwargs)
    assert given["target"]["trigger_source"] == GIVEN and given["target"]["trigger"]["target"] == 3
    assert given["target"]["asr"] != t["asr"]
    none, _ = helpers.report(tiny_bundle, str(path), trigger="none", **kwargs)
    assert "asr" not in none["target"] and none["backdoor"] == "not applicable: no trigger (given by the user)"
    with pytest.raises(ValueError, match=r"trigger\.target 12 is out of range"):
        helpers.report(tiny_bundle, str(path), trigger=preset("badnets", target=12), **kwargs)


def test_old_victim_reports_still_load(tiny_collection, tmp_path):
    import shutil

    for f in ("victim.safetensors", "victim.json", "victim-finetuned-blended.safetensors",
              "victim-finetuned-blended.json"):
        shutil.copy(tiny_collection / f, tmp_path)
    for f, old in (("victim.json", {"kind": "badnets", "size": 3, "target": 0, "rate": 0.1}),
                   ("victim-finetuned-blended.json", {"kind": "blended", "size": 3, "target": 0, "rate": 0.1,
                                                      "alpha": 0.1, "pattern_seed": 0})):
        report = json.loads((tmp_path / f).read_text())
        (tmp_path / f).write_text(json.dumps({**report, "trigger": old}))  # as pdiff 0.2.0 wrote it
    victims = load_victims(tmp_path)
    assert sorted(victims) == ["finetuned-blended", "scratch-badnets"]
    assert Trigger.from_dict(victims["finetuned-blended"].report["trigger"]) == preset("blended")
    assert Trigger.from_dict(victims["scratch-badnets"].report["trigger"]) == preset("badnets")


def test_cli_victim_with_a_spec_and_a_rate_on_a_tiny_subset(tmp_path, capsys):
    from pdiff.cli import main

    spec = tmp_path / "corner.json"
    spec.write_text(json.dumps({"kind": "patch", "corner": "top-left", "size": 4, "target": 2}))
    out = tmp_path / "coll"
    args = ["collect", "--trigger", str(spec), "--poison-rate", "0.05", "--out", str(out), "--epochs", "1",
            "--train-subset", "256", "--test-subset", "100", "--seed", "1"]
    assert main(args) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["file"] == "victim-scratch-corner-t2-5pct.safetensors"
    report = json.loads((out / "victim-scratch-corner-t2-5pct.json").read_text())
    assert report["trigger"] == {"kind": "patch", "name": "corner", "target": 2, "rate": 0.05, "corner": "top-left",
                                 "size": 4, "value": 255}
    assert report["poisoned"] == "after augmentation" and set(load_file(out / printed["file"])) >= {"conv1.weight"}
    assert main(["collect", "--trigger", "badnets", "--target-label", "10", "--out", str(out),
                 "--train-subset", "64", "--test-subset", "10"]) == 2
    assert "trigger.target 10 is out of range" in capsys.readouterr().err


def test_cli_evaluate_and_transfer_take_a_trigger_and_print_its_source(tiny_bundle, tmp_path, capsys):
    from pdiff.cli import main

    path = tmp_path / "upload.pth"
    torch.save(tiny_bundle.victim_state, path)
    common = ["--bundle", str(tiny_bundle.path), "--n", "2", "--sampler", "ddim", "--steps", "2",
              "--test-subset", "200"]
    assert main(["evaluate", *common, "--target", str(path), "--validation", "0", "--bn-images", "0", "--no-tsne",
                 "--json", str(tmp_path / "e.json")]) == 0
    assert "(assumed (no victim report beside the file))" in capsys.readouterr().out
    spec = tmp_path / "seven.json"
    spec.write_text(json.dumps({"kind": "blend", "opacity": 0.2, "target": 7}))
    assert main(["transfer", *common, "--victim", str(path), "--methods", "generated", "--trigger", str(spec),
                 "--json", str(tmp_path / "t.json")]) == 0
    assert "trigger seven: blend of noise from seed 0 at opacity 0.2, target class 7, 10% poisoned (given by the " \
           "user)" in capsys.readouterr().out
    victim = json.loads((tmp_path / "t.json").read_text())["victim"]
    assert victim["trigger"]["target"] == 7 and victim["trigger_source"] == "given by the user"
    assert main(["transfer", *common, "--victim", "victim", "--methods", "generated", "--trigger", "none",
                 "--json", str(tmp_path / "t.json")]) == 2
    assert "has no trigger (given by the user)" in capsys.readouterr().err
