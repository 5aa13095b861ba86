import os

# no phoning home from gradio / huggingface_hub in any test
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from pdiff.collect import Split  # noqa: E402
from pdiff.data import load_split  # noqa: E402

torch.set_num_threads(2)


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
