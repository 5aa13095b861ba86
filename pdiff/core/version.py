"""The package version, readable without importing anything (pyproject.toml reads it; bundles record it)."""
__version__ = "0.3.0"
