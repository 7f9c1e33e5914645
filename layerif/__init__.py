"""LayerIF: per-layer influence-function scores for LLMs and what to do with them."""
__version__ = "0.1.0"

from .models import describe, linear_modules, load_model, transformer_blocks  # noqa: E402

__all__ = ["__version__", "describe", "linear_modules", "load_model", "transformer_blocks"]
