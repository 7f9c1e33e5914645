"""``layerif`` command line: thin wrappers over :mod:`layerif.study` and friends."""
from __future__ import annotations

import argparse
import sys

from . import study
from .prune.config import METHODS
from .prune.magnitude import TIES


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

    pr = sub.add_parser(
        "prune", help="prune a model (per-block or global sparsity), evaluate it, save both",
        description="Load MODEL, prune every transformer block with the profile's PruneConfig "
        "preset (calibration rows x tokens: smoke 4x64, cpu 32x256, paper 128x2048), then "
        "measure perplexity on held-out BoolQ passages and zero-shot accuracy (lm-eval), and "
        "save the sparsity report and the evaluation under --out (sparsity/, evaluation/). "
        "A saved result of the same identity is loaded, not recomputed; one of another "
        "identity is refused unless --overwrite.")
    pr.add_argument("model", help="embedded name, local checkpoint directory or hub id")
    ratios = pr.add_mutually_exclusive_group(required=True)
    ratios.add_argument("--allocation", help="CSV of per-block ratios: first column the block "
                        "index, then a 'sparsity' column (as `layerif allocate sparsity --out` "
                        "writes) or a single column")
    ratios.add_argument("--sparsity", type=float, help="one global sparsity in (0, 1) for "
                        "every block, instead of --allocation")
    pr.add_argument("--method", default="wanda", choices=METHODS)
    pr.add_argument("--profile", default="cpu", choices=study.PROFILES)
    pr.add_argument("--ties", default="exact", choices=TIES, help="exact (default) or the "
                    "published code's threshold rule (reference)")
    pr.add_argument("--out", help="result folder (default: results/<profile>/pruned/<model>/"
                    "<method>/<CSV stem or uniform-s<sparsity>>)")
    pr.add_argument("--eval-limit", type=_limit, help="zero-shot examples per task, or 'all' "
                    "(default: the profile's EvalConfig preset: smoke 4, cpu 60, paper all)")
    pr.add_argument("--tasks", nargs="*", help="zero-shot tasks (default: the paper's seven); "
                    "--tasks with no names: perplexity only")
    pr.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda ...")
    pr.add_argument("--overwrite", action="store_true", help="replace results of another identity")

    desc = sub.add_parser("describe", help="print a model's transformer blocks")
    desc.add_argument("model", nargs="?", default="smollm2-135m")

    sub.add_parser("sync-notebooks", help="write notebooks/*.ipynb from the MyST sources (nbval)")
    sub.add_parser("tasks", help="print the task registry's split sizes")
    return p


def _limit(text: str) -> int | str:
    if text == "all":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is invalid: expected an int >= 1 or 'all'")
    return value


def _prune(args) -> None:
    from pathlib import Path

    from .evaluate import EvalConfig
    from .prune import PruneConfig, read_allocation
    from .prune import run

    config = PruneConfig.preset(args.profile, method=args.method, ties=args.ties)
    if args.allocation is not None:
        allocation, label = read_allocation(args.allocation), Path(args.allocation).stem
    else:
        allocation, label = args.sparsity, f"uniform-s{args.sparsity:g}"
    evaluation = EvalConfig.preset(args.profile)
    if args.eval_limit is not None:
        evaluation = evaluation.replace(n_examples=None if args.eval_limit == "all" else args.eval_limit)
    if args.tasks is not None:
        evaluation = evaluation.replace(tasks=tuple(args.tasks))
    out = args.out or run.default_out(args.profile, args.model, config.method, label)
    result = run.prune_and_evaluate(args.model, allocation, config, out, evaluation,
                                    device=args.device, overwrite=args.overwrite)
    print(result.evaluation.to_string())
    sparsity = float(result.report["zeros"].sum() / result.report["params"].sum())
    print(f"global sparsity {sparsity:.4f}; {result.status}: {result.out}")


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
    elif args.command == "prune":
        _prune(args)
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
