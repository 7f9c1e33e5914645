"""The package version, importable without torch (the notebook runner reads it)."""
__version__ = "0.1.0"
