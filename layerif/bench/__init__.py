"""Performance benchmarks (not tests): run with ``python -m layerif.bench NAME``."""
