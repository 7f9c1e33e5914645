"""``layerif`` command line: thin wrappers over :mod:`layerif.study` and friends."""
from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from . import study
from ._config import check
from .cli_errors import check_writable, one_line
from .evaluate.suite import BACKENDS
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
        "go to results/<profile>/executed/. With --params FILE the file's values override "
        "the profile's and the executed notebook goes to results/<profile>/with-params/"
        "<hash of the values>/ instead, so the profile's own run (and the book) is untouched; "
        "results the notebook saves still go through the store, which refuses to replace "
        "one of the profile's results by a different one.",
        epilog="examples: layerif run 00_model_and_data --profile smoke | "
        "layerif run 05_pruning --profile cpu --params my.yaml  (my.yaml: 'models: "
        "[smollm2-135m]'); `layerif status` lists the notebook names")
    run.add_argument("notebooks", nargs="*", help="notebook names, e.g. 01_layer_scores "
                     "(default: all, in run order)")
    run.add_argument("--profile", default="cpu", choices=study.PROFILES)
    run.add_argument("--params", metavar="FILE", help="YAML file of parameter values "
                     "overriding the profile's (keys: the notebook's parameters cell); needs "
                     "notebook names")
    run.add_argument("--force", action="store_true", help="re-run current notebooks too")

    book = sub.add_parser(
        "book", help="bring all notebooks up to date; with --profile cpu also render the book",
        description="Run every notebook that is not current, then render _build/html from "
        "the cpu notebooks in book/executed/ (jupyter-book build -W -n --keep-going --all: "
        "any warning or unresolved reference fails the build and is printed). With --profile "
        "smoke or paper the notebooks are only run, into results/<profile>/executed/, and "
        "nothing is rendered: the book always shows the cpu profile.")
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
        description="Score each TASK (a registry task, or pruning_pool) with the sizes of "
        "params/<profile>/01_layer_scores.yaml (--model's entry of its sizes, else its first "
        "model's; --n-train, --n-val override), DataInf and Hessian-free from shared passes. "
        "Saved results of the same identity are loaded, not recomputed; a saved result of "
        "another identity is refused unless --overwrite.")
    sc.add_argument("tasks", nargs="+", help="task names, e.g. mrpc sst2 pruning_pool")
    sc.add_argument("--profile", default="cpu", choices=study.PROFILES)
    sc.add_argument("--model", default="smollm2-135m", help="embedded name, directory or hub id")
    sc.add_argument("--n-train", type=int, help="training examples per task (default: the "
                    "profile's params)")
    sc.add_argument("--n-val", type=int, help="validation examples per task (default: the "
                    "profile's params)")
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
        description="Load MODEL, prune every transformer block with the calibration size of "
        "`prune:` in params/<profile>/05_pruning.yaml (the book's), then measure perplexity "
        "on held-out BoolQ passages and zero-shot accuracy (sizes: its `evaluation:`), and "
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
                    "(default: n_examples of `evaluation:` in params/<profile>/05_pruning.yaml)")
    pr.add_argument("--tasks", nargs="*", help="zero-shot tasks (default: the paper's seven); "
                    "--tasks with no names: perplexity only")
    _device_and_overwrite(pr)

    ev = sub.add_parser(
        "evaluate", help="zero-shot accuracy and perplexity of a model, saved under results/",
        description="Load MODEL and measure perplexity on held-out BoolQ passages and "
        "zero-shot accuracy (acc, acc_norm, margin per task) with the sizes of `evaluation:` "
        "in params/<profile>/05_pruning.yaml (the book's evaluation), print the table and "
        "save it under --out. A saved result of the same "
        "identity is loaded, not recomputed; one of another identity is refused unless "
        "--overwrite.",
        epilog="example: layerif evaluate smollm2-135m --profile smoke --tasks boolq rte")
    ev.add_argument("model", help="embedded name (smollm2-135m, gemma3-270m), local "
                    "checkpoint directory or hub id")
    ev.add_argument("--profile", default="cpu", choices=study.PROFILES)
    ev.add_argument("--tasks", nargs="*", help="zero-shot tasks (default: the paper's seven; "
                    "`layerif tasks` lists them); --tasks with no names: perplexity only")
    ev.add_argument("--n-examples", type=_limit, help="examples per task, or 'all' (default: "
                    "the profile's params)")
    ev.add_argument("--backend", choices=BACKENDS, help="zero-shot scorer (default: layerif; "
                    "lm-eval runs stock lm-evaluation-harness)")
    ev.add_argument("--out", help="result folder (default: results/<profile>/evaluated/<model>/"
                    "<hash of the evaluation config>)")
    _device_and_overwrite(ev)

    mo = sub.add_parser(
        "moe", help="fine-tune a LoRA-MoE with an expert allocation on a task, evaluate, save",
        description="Attach a LoRA-MoE to MODEL with experts per block from --method (LayerIF "
        "+ve / Top 25% / All from the task's saved scores, `layerif scores TASK` first; "
        "AlphaLoRA or MoLA <pattern> from the model alone; 'LoRA (same parameters)'; 'Base "
        "model') or from --allocation CSV (`layerif allocate experts --out`), fine-tune it on "
        "TASK's training examples with the profile's recipe and sizes (params/<profile>/"
        "03_lora_moe.yaml; adapter: rank 8, alpha 16, top-2; smoke: rank 4), evaluate on "
        "held-out examples and save under results/<profile>/moe/. A saved run of the same identity is loaded, not retrained.",
        epilog="example: layerif moe smollm2-135m csqa --method 'MoLA 5555' --profile smoke")
    mo.add_argument("model", help="embedded name, local checkpoint directory or hub id")
    mo.add_argument("task", help="task label, e.g. csqa, sst2, openbookqa:instruct")
    how = mo.add_mutually_exclusive_group(required=True)
    how.add_argument("--method", help="allocation method: 'LayerIF +ve', 'LayerIF Top 25%%', "
                     "'LayerIF All', AlphaLoRA, 'MoLA 2468' (or 5555, 8642, 1234, 46810, 3578), "
                     "'LoRA (same parameters)', 'Base model'")
    how.add_argument("--allocation", help="CSV of experts per block (an 'experts' column)")
    mo.add_argument("--per-block", type=float, default=5.0, help="average experts per block "
                    "for --method (2.5, 5 or 7; default 5)")
    mo.add_argument("--seed", type=int, default=0, help="adapter initialisation, data order "
                    "and dropout seed")
    mo.add_argument("--profile", default="cpu", choices=study.PROFILES)
    mo.add_argument("--n-train", type=_limit, help="training examples (default: n_train of "
                    "params/<profile>/03_lora_moe.yaml)")
    mo.add_argument("--n-eval", type=_limit, help="held-out examples (default: n_eval of "
                    "params/<profile>/03_lora_moe.yaml)")
    mo.add_argument("--results", help="results folder holding scores/ and receiving moe/ "
                    "(default: results/<profile>)")
    _device_and_overwrite(mo, "replace a run of another identity")

    desc = sub.add_parser("describe", help="print a model's transformer blocks")
    desc.add_argument("model", nargs="?", default="smollm2-135m")

    sub.add_parser("sync-notebooks", help="write notebooks/*.ipynb from the MyST sources (nbval)")
    sub.add_parser("tasks", help="print the task registry's split sizes")
    return p


def _device_and_overwrite(parser, overwrite_help: str = "replace results of another identity") -> None:
    """The --device and --overwrite options of the commands that compute and save a result."""
    parser.add_argument("--device", default="auto", help="auto (CUDA if present) | cpu | cuda ...")
    parser.add_argument("--overwrite", action="store_true", help=overwrite_help)


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

    from .prune import PruneConfig, read_allocation
    from .prune import run

    sizes = _pruning_params(args.profile).get("prune", {})
    config = PruneConfig(**{**sizes, "method": args.method, "ties": args.ties})
    if args.allocation is not None:
        allocation, label = read_allocation(args.allocation), Path(args.allocation).stem
    else:
        allocation, label = args.sparsity, f"uniform-s{args.sparsity:g}"
    evaluation = _eval_config(args)
    out = args.out or run.default_out(args.profile, args.model, config.method, label)
    check_writable(out, "--out")
    result = run.prune_and_evaluate(args.model, allocation, config, out, evaluation,
                                    device=args.device, overwrite=args.overwrite)
    print(result.evaluation.to_string())
    sparsity = float(result.report["zeros"].sum() / result.report["params"].sum())
    print(f"global sparsity {sparsity:.4f}; {result.status}: {result.out}")


def _pruning_params(profile: str) -> dict:
    """``params/<profile>/05_pruning.yaml``: its ``prune:`` and ``evaluation:`` (the book's
    calibration and evaluation sizes) size ``layerif prune`` and ``layerif evaluate``."""
    from .experiments.pruning_study import NOTEBOOK

    return study.load_params(NOTEBOOK, profile)


def _eval_config(args):
    """The profile's evaluation (``evaluation:`` of the pruning notebook's params) with the
    command's --tasks, --n-examples, --backend."""
    from .evaluate import EvalConfig

    config = EvalConfig(**_pruning_params(args.profile).get("evaluation", {}))
    limit = getattr(args, "n_examples", None) or getattr(args, "eval_limit", None)
    if limit is not None:
        config = config.replace(n_examples=None if limit == "all" else limit)
    if args.tasks is not None:
        config = config.replace(tasks=tuple(args.tasks))
    if getattr(args, "backend", None) is not None:
        config = config.replace(backend=args.backend)
    return config


def _evaluate(args) -> None:
    from .evaluate import run

    config = _eval_config(args)
    out = args.out or run.default_out(args.profile, args.model, config)
    check_writable(out, "--out")
    result = run.evaluate_and_save(args.model, config, out, device=args.device,
                                   overwrite=args.overwrite)
    print(result.evaluation.to_string())
    print(f"{result.status}: {result.out}")


def _run(args) -> None:
    if args.params is not None and not args.notebooks:
        raise ValueError("--params needs notebook names: the file's keys are one notebook's "
                         f"parameters (notebooks: {', '.join(study.list_notebooks())})")
    for name in args.notebooks or study.list_notebooks():
        since = datetime.datetime.now(datetime.timezone.utc)
        if args.params is None:
            path = study.run_notebook(name, args.profile, force=args.force)
        else:
            path = study.run_with_params(name, args.profile, args.params, force=args.force)
        if study.ran_since(path, since):
            print(f"ran {name}: {path}")
        else:
            print(f"skipped {name} (current: same source, parameters and upstream runs; "
                  f"--force re-runs it): {path}")


def _scores(args) -> None:
    from . import distributed
    from .experiments import scoring
    from .notebook_params import load_options
    from .scores import METHODS

    sizes = {k: v for k, v in (("n_train", args.n_train), ("n_val", args.n_val)) if v is not None}
    params = study.load_params(scoring.NOTEBOOK, args.profile)
    config = scoring.score_config(params, args.model, **sizes)
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    ok = bool(methods) and set(methods) <= set(METHODS) and len(set(methods)) == len(methods)
    check(ok, "--methods", args.methods,
          f"distinct comma-separated names from {', '.join(METHODS)}")
    check_writable(study.results_dir(args.profile) / "scores", "the results folder")
    started = distributed.init_from_env()  # under torchrun: one rank per process
    main = distributed.is_main()
    try:
        runs = scoring.score_tasks(args.model, args.tasks, config, study.results_dir(args.profile),
                                   methods=methods, overwrite=args.overwrite, progress=main,
                                   load_kwargs=load_options(params))
    finally:
        if started:
            distributed.close()
    if main:
        print(runs.to_string())


def _moe(args) -> None:
    from .experiments.moe import NOTEBOOK, single_run
    from .moe.io import read_experts

    n_train, n_eval = (100_000 if n == "all" else n for n in (args.n_train, args.n_eval))
    if args.allocation is not None:
        read_experts(args.allocation)  # whole numbers >= 1, else the file and row are named
    check_writable(Path(args.results or study.results_dir(args.profile)) / "moe", "--results")
    params = study.load_params(NOTEBOOK, args.profile)  # the one source of sizes and recipe
    run, folder = single_run(args.model, args.task, args.method, args.allocation, params,
                             args.per_block, args.seed, n_train, n_eval, args.results,
                             device=args.device, overwrite=args.overwrite)
    print(run.examples[["label", "prediction", "correct", "margin"]].to_string())
    print(f"accuracy {run.accuracy:.4f} on {len(run.examples)} examples; trainable parameters "
          f"{run.info['trainable_params']}; {run.info['status']}: {folder}")


def _allocate(args) -> None:
    from . import allocate
    from .models import describe, load_model
    from .scores import LayerScores

    if args.kind == "sparsity":  # before the model loads
        check(0 < args.target < allocate.CLIP, "--target", args.target,
              f"a global sparsity in (0, {allocate.CLIP}): every block is capped at "
              f"{allocate.CLIP} (the authors' clip), so the target must stay below it")
    saved = LayerScores.load(args.scores_dir)
    scores = saved.aggregate(args.aggregation)
    if args.kind == "experts":
        if args.total is None:
            raise ValueError("--total is required for experts: the total over all blocks")
        out = allocate.experts(scores, args.total, args.beta).to_frame()
    else:
        from . import store

        label = store.load_manifest(args.scores_dir).get("model_label")
        model, _ = load_model(label or saved.model_id, device="cpu")
        out = allocate.sparsity(scores, args.target, describe(model)["linear_params"],
                                args.epsilon, smooth=not args.no_smooth,
                                clip=allocate.CLIP).to_frame()
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
        if getattr(args, "device", None) is not None:
            from .models import resolve_device

            resolve_device(args.device)  # an unavailable device fails before any work
        return _dispatch(args)
    except Exception as err:  # noqa: BLE001 -- sorted into expected (one line) and bugs
        line = one_line(err)
        if line is None:
            raise
        parser.exit(2, f"layerif {args.command}: error: {line}\n")


def _dispatch(args) -> int:
    if args.command == "scores":
        _scores(args)
    elif args.command == "allocate":
        _allocate(args)
    elif args.command == "prune":
        _prune(args)
    elif args.command == "evaluate":
        _evaluate(args)
    elif args.command == "moe":
        _moe(args)
    elif args.command == "run":
        _run(args)
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
