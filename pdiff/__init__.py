"""pdiff: neural-network parameter diffusion (p-diff) as a library, CLI and Gradio app."""

__version__ = "0.1.0"
