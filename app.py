"""Entry point for `python app.py` and Hugging Face Spaces: build the UI, launch it."""
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from pdiff.app.ui import build_demo, launch  # noqa: E402

if __name__ == "__main__":
    launch(build_demo(warm=os.environ.get("PDIFF_WARM", "1") != "0"))  # PDIFF_WARM=0: no head start (benches)
