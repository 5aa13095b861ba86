import os

# no phoning home from gradio / huggingface_hub in any test
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from pdiff.data.datasets import Split, load_split  # noqa: E402

# both cores, unless the run asks for fewer: beside other jobs two threads per process oversubscribe the cores and
# a tiny network's step can take 10x longer (OMP_NUM_THREADS=1 python -m pytest ...)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or 2))
SLOW_KINDS = ("server", "browser", "install")


def pytest_collection_modifyitems(items):
    """A test that starts a server, a browser or an install is slow too: the fast tier (-m "not slow") skips it."""
    for item in items:
        if any(item.get_closest_marker(kind) for kind in SLOW_KINDS):
            item.add_marker(pytest.mark.slow)


class _Payload:
    """Unpickling this would create a file: proof that a loader ran pickled code."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mknod, (self.path,))


@pytest.fixture(scope="session", autouse=True)
def _results_cache(tmp_path_factory):
    """The app's results cache (measure.store) in a folder of this test run, never the user's (PDIFF_CACHE, if the
    run sets it, wins)."""
    os.environ.setdefault("PDIFF_CACHE", str(tmp_path_factory.mktemp("pdiff-cache")))


@pytest.fixture()
def payload_checkpoint(tmp_path):
    """A .pth whose pickle would create `marker` if it were ever unpickled unsafely: (path, marker)."""
    marker = tmp_path / "created-by-payload"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "extra": _Payload(str(marker))}, path)
    return path, marker


@pytest.fixture(scope="session")
def fmnist_test() -> Split:
    """The Fashion-MNIST test split shipped in assets/ (real data)."""
    return Split(*load_split("fashion-mnist", "test"), "fashion-mnist")


@pytest.fixture(scope="session")
def small_test(fmnist_test) -> Split:
    return fmnist_test.subset(500)


@pytest.fixture(scope="session")
def small_train() -> Split:
    """First 1024 images of the real training split (Debian's dataset-fashion-mnist)."""
    try:
        images, labels = load_split("fashion-mnist", "train")
    except Exception as e:  # pragma: no cover - .ci/run installs the package
        pytest.skip(f"Fashion-MNIST train split not installed: {e}")
    return Split(images[:1024], labels[:1024], "fashion-mnist")


@pytest.fixture(scope="session")
def tiny_collection(tmp_path_factory, small_train, small_test):
    """A real collection (K = 8), a BadNets victim and a fine-tuned blended one, on 1024 training images."""
    from pdiff.data.triggers import Trigger
    from pdiff.collection.collect import run_collect
    from pdiff.core.settings import DataSpec
    from pdiff.data.plan import RunData
    from pdiff.models.tasks import get_task
    from pdiff.collection.victims import run_victim

    task = get_task("fmnist-convnet")
    task.recipe.epochs, task.recipe.k, task.recipe.save_every = 1, 8, 4
    out = tmp_path_factory.mktemp("collection")
    ALL = DataSpec(validation=0)  # these tiny models train on every image of the split
    run_collect(task, RunData(small_test, small_train, ALL), seed=0, out=out)
    run_victim(task, Trigger(), out, RunData(small_test, small_train, ALL), 1)
    task.recipe.finetune_epochs = 1
    run_victim(task, Trigger(kind="blended"), out, RunData(small_test, small_train, ALL), 2, kind="finetuned")
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, tiny_collection):
    """A bundle trained for a few steps with small networks, saved and loaded back."""
    from pdiff.generator.bundle import Bundle
    from pdiff.core.config import AEConfig, DDPMConfig
    from pdiff.collection.folder import Collection
    from pdiff.generator.training import train_bundle

    bundle = train_bundle(Collection.load(tiny_collection), AEConfig(channels=[16, 32], steps=60),
                          DDPMConfig(channels=32, blocks=2, steps=60), seed=0)
    path = bundle.save(tmp_path_factory.mktemp("bundles") / "tiny")
    return Bundle.load(path)


@pytest.fixture(scope="session")
def victim_report(tiny_bundle, small_test):
    """The evaluate report of 7 generated sets on the tiny bundle's BadNets victim (the plots and the report read it)."""
    from helpers import report

    return report(tiny_bundle, "victim", small_test, n=7, seed=0, sampler="ddim", steps=5)[0]
