"""A multi-trunk collection's checkpoints are scored on their own trunks (the behaviour term and the reconstruction
report), a single-trunk one on its base as before; the guidance choice records the sampler and steps it drew with,
and by default that is the reports' sampler. Tiny synthetic collections of untrained ConvNets: no training."""
import pytest
import torch

from pdiff.collection.folder import Collection
from pdiff.core.config import AEConfig, DDPMConfig
from pdiff.core.params import layout_of, norm_stats, normalize
from pdiff.core.runtime import seeded_from
from pdiff.core.settings import SamplingSpec
from pdiff.core.splice import splice
from pdiff.generator.conditions import Conditions
from pdiff.generator.guidance import GUIDANCE_GRID, GUIDANCE_SAMPLING, set_guidance
from pdiff.generator.training import BehaviourLoss, reconstruction_report, train_bundle
from pdiff.models.loading import check_architecture
from pdiff.models.tasks import build_model, get_task

PER_TRUNK = 3


def _collection(trunks: int) -> Collection:
    """PER_TRUNK checkpoints per trunk: each trunk an untrained ConvNet of its own seed, each checkpoint its trunk's
    bn3 and head plus noise (so the heads differ too)."""
    task = get_task("fmnist-convnet")
    g = torch.Generator().manual_seed(0)
    states = []
    for _ in range(trunks):
        with seeded_from(g):
            states.append(build_model(task).state_dict())
    trunk_of = [t for t in range(trunks) for _ in range(PER_TRUNK)]
    params = {n: torch.stack([states[t][n] + 0.1 * torch.randn(states[t][n].shape, generator=g) for t in trunk_of])
              for n in task.train_layer}
    return Collection(task, layout_of(params, task.train_layer, stacked=True), params, [0.0] * len(trunk_of), states,
                      trunk_of, [0.0] * trunks)


def _one_trunk(coll: Collection, trunk: int) -> Collection:
    """The checkpoints of one trunk, with that trunk as the base (what a single-trunk collection of it would be)."""
    rows = torch.tensor(coll.trunk_of) == trunk
    return Collection(coll.task, coll.layout, {n: v[rows] for n, v in coll.params.items()}, [0.0] * int(rows.sum()),
                      [coll.trunks[trunk]], [0] * int(rows.sum()), [0.0])


def _logits(coll: Collection, k: int, state: dict, images) -> torch.Tensor:
    """Checkpoint k spliced into `state`, run whole on `images`: the definition the behaviour term computes."""
    model = check_architecture(coll.task, splice(state, coll.vectors()[k], coll.layout)).eval()
    with torch.no_grad():
        return model(images.normalized())


def test_the_behaviour_term_scores_each_checkpoint_on_its_own_trunk(small_test):
    coll = _collection(2)
    mean, std = norm_stats(coll.params, coll.layout)
    images = small_test.subset(32)
    loss = BehaviourLoss(coll, mean, std, 32, train=small_test)
    k = PER_TRUNK  # the first checkpoint of trunk 1
    own = _logits(coll, k, coll.trunks[1], images)
    assert torch.allclose(loss.targets[k], own, atol=1e-5)
    assert not torch.allclose(loss.targets[k], _logits(coll, k, coll.base, images), atol=1e-2)  # trunk 0's features
    # a trunk-0 checkpoint is scored on the base, as in a single-trunk collection
    assert torch.allclose(loss.targets[0], _logits(coll, 0, coll.base, images), atol=1e-5)
    # rows of both trunks in one batch, in any order: each original against itself is 0, and gradients reach both
    x = normalize(coll.vectors(), mean, std, coll.layout)
    idx = torch.tensor([4, 0, 5, 1])
    assert loss(x[idx], idx).item() < 1e-8
    recon = (x[idx] + 0.1).requires_grad_()
    loss(recon, idx).backward()
    assert (recon.grad.abs().sum(1) > 0).all()


def test_a_single_trunk_collection_is_scored_on_its_base(small_test):
    coll = _collection(1)
    mean, std = norm_stats(coll.params, coll.layout)
    loss = BehaviourLoss(coll, mean, std, 32, train=small_test)
    for k in range(coll.k):
        assert torch.allclose(loss.targets[k], _logits(coll, k, coll.base, small_test.subset(32)), atol=1e-5)


def test_the_reconstruction_report_splices_each_original_into_its_own_trunk(small_test):
    coll = _collection(2)
    bundle = train_bundle(coll, AEConfig(channels=[16, 32], steps=3, behaviour_images=16),
                          DDPMConfig(channels=32, blocks=2, steps=3), seed=0, train=small_test)
    report = reconstruction_report(bundle, small_test, trunks=coll.trunks)
    alone = [reconstruction_report(train_bundle(_one_trunk(coll, t), AEConfig(channels=[16, 32], steps=3,
                                                                               behaviour_images=16),
                                                DDPMConfig(channels=32, blocks=2, steps=3), seed=0, train=small_test),
                                   small_test)["originals_acc"] for t in (0, 1)]
    assert report["originals_acc"] == alone[0] + alone[1]  # each original as its own trunk's collection scores it
    on_base = reconstruction_report(bundle, small_test, trunks=[coll.base, coll.base])["originals_acc"]
    assert on_base[PER_TRUNK:] != report["originals_acc"][PER_TRUNK:]
    with pytest.raises(ValueError, match=r"originals come from trunks \[0, 1\]; give every trunk's state"):
        reconstruction_report(bundle, small_test)


def _acc_bundle(small_test):
    """A tiny acc-conditional bundle on one trunk, with a 20-step noise schedule (so DDPM runs all of it fast)."""
    coll = _collection(1)
    conditions = Conditions.of("acc", torch.tensor([90.0, 91.0, 92.0]), {"range": [90.0, 92.0]})
    return train_bundle(coll, AEConfig(channels=[16, 32], steps=3, behaviour_weight=0),
                        DDPMConfig(channels=32, blocks=2, steps=3, timesteps=20), seed=0, train=small_test,
                        conditions=conditions)


def test_the_guidance_choice_records_its_sampler_and_steps(small_test):
    bundle = _acc_bundle(small_test)
    scale = set_guidance(bundle, small_test.subset(100), sampling=SamplingSpec(4, "ddim", 3, seed=0))
    record = bundle.conditions.meta["guidance_on_validation"]
    assert bundle.conditions.meta["guidance"] == scale and scale in GUIDANCE_GRID
    assert (record["sampler"], record["steps"], record["sets"]) == ("ddim", 3, 4)
    assert set(record["mean_validation_acc"]) == {str(s) for s in GUIDANCE_GRID}


def test_the_guidance_choice_uses_the_reports_sampler_by_default(small_test):
    assert (GUIDANCE_SAMPLING.sampler, GUIDANCE_SAMPLING.steps) == (SamplingSpec.sampler, SamplingSpec.steps) \
        and GUIDANCE_SAMPLING.sampler == "ddpm"
    bundle = _acc_bundle(small_test)
    set_guidance(bundle, small_test.subset(100))
    record = bundle.conditions.meta["guidance_on_validation"]
    assert (record["sampler"], record["steps"], record["sets"]) == ("ddpm", 20, GUIDANCE_SAMPLING.n)  # all T steps
