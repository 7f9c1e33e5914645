"""``layerif`` command line: thin wrappers over :mod:`layerif.study` and friends."""
from __future__ import annotations

import argparse
import sys

from . import study


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="layerif", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute notebooks with a parameter profile")
    run.add_argument("notebooks", nargs="*", help="notebook names (default: all)")
    run.add_argument("--profile", default="cpu", choices=study.PROFILES)
    run.add_argument("--force", action="store_true", help="re-run unchanged notebooks")

    book = sub.add_parser("book", help="execute all notebooks and render the book")
    book.add_argument("--profile", default="cpu", choices=study.PROFILES)
    book.add_argument("--force", action="store_true", help="re-run unchanged notebooks")

    desc = sub.add_parser("describe", help="print a model's transformer blocks")
    desc.add_argument("model", nargs="?", default="smollm2-135m")

    sub.add_parser("sync-notebooks", help="write notebooks/*.ipynb from the MyST sources (nbval)")
    sub.add_parser("tasks", help="print the task registry's split sizes")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "run":
        names = args.notebooks or study.list_notebooks()
        for name in names:
            print(study.run_notebook(name, args.profile, force=args.force))
    elif args.command == "book":
        print(study.build_book(args.profile, force=args.force))
    elif args.command == "describe":
        from .models import describe, load_model

        model, _ = load_model(args.model, device="cpu")
        print(describe(model).to_string())
    elif args.command == "sync-notebooks":
        for path in study.sync_notebooks():
            print(path)
    elif args.command == "tasks":
        from .data import split_sizes

        print(split_sizes().to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())
