"""``python -m layerif.bench {influence,prune,moe,evaluate,paper-scale,profile-scores} [options]`` -- benchmarks.

Each benchmark lives in its own module with a ``main(argv)`` and prints a table of times,
ratios against a plain baseline, and peak memory.
"""
import importlib
import sys

BENCHES = ("influence", "prune", "moe", "evaluate", "paper-scale", "profile-scores")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in BENCHES:
        print(f"usage: python -m layerif.bench {{{','.join(BENCHES)}}} [options]", file=sys.stderr)
        return 2
    module = importlib.import_module(f"layerif.bench.{argv[0].replace('-', '_')}")
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
