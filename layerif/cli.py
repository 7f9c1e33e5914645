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

    sc = sub.add_parser(
        "scores", help="LayerIF scores of a model on tasks, saved under results/<profile>/scores",
        description="Score each TASK (a registry task, or pruning_pool) with the profile's "
        "ScoreConfig preset (sizes overridable), DataInf and Hessian-free from shared passes. "
        "Saved results of the same identity are loaded, not recomputed; a saved result of "
        "another identity is refused unless --overwrite.")
    sc.add_argument("tasks", nargs="+", help="task names, e.g. mrpc sst2 pruning_pool")
    sc.add_argument("--profile", default="cpu", choices=study.PROFILES)
    sc.add_argument("--model", default="smollm2-135m", help="embedded name, directory or hub id")
    sc.add_argument("--n-train", type=int, help="training examples per task (preset's default)")
    sc.add_argument("--n-val", type=int, help="validation examples per task")
    sc.add_argument("--methods", default="datainf,hessian_free",
                    help="comma-separated: datainf, hessian_free, exact")
    sc.add_argument("--overwrite", action="store_true", help="replace results of another identity")

    al = sub.add_parser(
        "allocate", help="experts or sparsity per block from saved scores, as CSV",
        description="Read a LayerScores folder (from `layerif scores`) and print (or --out) a "
        "CSV with one row per block.")
    al.add_argument("kind", choices=["experts", "sparsity"])
    al.add_argument("scores_dir", help="a folder written by LayerScores.save")
    al.add_argument("--aggregation", default="positive", choices=["positive", "top", "all"])
    al.add_argument("--total", type=int, help="experts: total over all blocks (required)")
    al.add_argument("--beta", type=float, default=2.5, help="experts: exponent (default 2.5)")
    al.add_argument("--target", type=float, default=0.5, help="sparsity: global target")
    al.add_argument("--epsilon", type=float, default=0.1, help="sparsity: band half-width")
    al.add_argument("--no-smooth", action="store_true", help="sparsity: skip Savitzky-Golay")
    al.add_argument("--out", help="write the CSV here instead of printing it")

    desc = sub.add_parser("describe", help="print a model's transformer blocks")
    desc.add_argument("model", nargs="?", default="smollm2-135m")

    sub.add_parser("sync-notebooks", help="write notebooks/*.ipynb from the MyST sources (nbval)")
    sub.add_parser("tasks", help="print the task registry's split sizes")
    return p


def _scores(args) -> None:
    from .experiments import scoring
    from .scores import ScoreConfig

    sizes = {k: v for k, v in (("n_train", args.n_train), ("n_val", args.n_val)) if v is not None}
    config = ScoreConfig.preset(args.profile, **sizes)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    runs = scoring.score_tasks(args.model, args.tasks, config, study.results_dir(args.profile),
                               methods=methods, overwrite=args.overwrite)
    print(runs.to_string())


def _allocate(args) -> None:
    from . import allocate
    from .models import describe, load_model
    from .scores import LayerScores

    saved = LayerScores.load(args.scores_dir)
    scores = saved.aggregate(args.aggregation)
    if args.kind == "experts":
        if args.total is None:
            raise ValueError("--total is required for experts: the total over all blocks")
        out = allocate.experts(scores, args.total, args.beta).to_frame()
    else:
        model, _ = load_model(saved.model_id, device="cpu")
        out = allocate.sparsity(scores, args.target, describe(model)["linear_params"],
                                args.epsilon, smooth=not args.no_smooth).to_frame()
    out.insert(0, "score", scores)
    text = out.to_csv()
    if args.out:
        with open(args.out, "x") as f:  # never overwrite a file silently
            f.write(text)
    else:
        print(text, end="")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        parser.exit(2, f"layerif {args.command}: error: {err}\n")


def _dispatch(args) -> int:
    if args.command == "scores":
        _scores(args)
    elif args.command == "allocate":
        _allocate(args)
    elif args.command == "run":
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
