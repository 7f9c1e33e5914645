"""``layerif`` command line: thin wrappers over :mod:`layerif.study` and friends."""
from __future__ import annotations

import argparse
import sys

from . import study


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="layerif", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run", help="execute notebooks with a parameter profile (skipping current ones)",
        description="Execute notebooks in run order with params/<profile>/. A notebook is "
        "skipped when its executed file records the same source, parameters and upstream "
        "runs. cpu notebooks go to book/executed/ (the book's, committed); smoke and paper "
        "go to results/<profile>/executed/.")
    run.add_argument("notebooks", nargs="*", help="notebook names (default: all)")
    run.add_argument("--profile", default="cpu", choices=study.PROFILES)
    run.add_argument("--force", action="store_true", help="re-run current notebooks too")

    book = sub.add_parser(
        "book", help="bring all notebooks up to date; with --profile cpu also render the book",
        description="Run every notebook that is not current, then render _build/html from "
        "the cpu notebooks in book/executed/. With --profile smoke or paper the notebooks "
        "are only run, into results/<profile>/executed/, and nothing is rendered: the book "
        "always shows the cpu profile.")
    book.add_argument("--profile", default="cpu", choices=study.PROFILES)
    book.add_argument("--force", action="store_true", help="re-run current notebooks too")

    stat = sub.add_parser(
        "status", help="say which executed notebooks are current, stale, missing or failed",
        description="One line per notebook: current | stale (which input changed: source, "
        "params, upstream) | missing | failed, and the command that fixes it. Exit status "
        "1 when any notebook is not current.")
    stat.add_argument("--profile", default="cpu", choices=study.PROFILES)

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
        out = study.build_book(args.profile, force=args.force)
        if args.profile != study.BOOK_PROFILE:
            print(f"notebooks of profile {args.profile!r} are in {out}; the book renders "
                  f"only the {study.BOOK_PROFILE!r} profile")
        print(out)
    elif args.command == "status":
        table = study.status(args.profile)
        print(table[["state", "changed", "run_id", "message"]].to_string())
        return int((table["state"] != "current").any())
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
