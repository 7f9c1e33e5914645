"""``layerif`` command line: thin wrappers over :mod:`layerif.study` and friends."""
from __future__ import annotations

import datetime
import sys
from pathlib import Path

from . import study
from ._config import check
from .cli_errors import check_writable, one_line
from . import cli_parser


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
    evaluation, load_kwargs = _eval_config(args), _load_kwargs(args)
    if load_kwargs["dtype"] != "float32":
        label = f"{label}-{load_kwargs['dtype']}"
    out = args.out or run.default_out(args.profile, args.model, config.method, label)
    check_writable(out, "--out")
    result = run.prune_and_evaluate(args.model, allocation, config, out, evaluation,
                                    device=args.device, overwrite=args.overwrite,
                                    load_kwargs=load_kwargs)
    print(result.evaluation.to_string())
    sparsity = float(result.report["zeros"].sum() / result.report["params"].sum())
    print(f"global sparsity {sparsity:.4f}; {result.status}: {result.out}")


def _pruning_params(profile: str) -> dict:
    """``params/<profile>/05_pruning.yaml``: its ``prune:`` and ``evaluation:`` (the book's
    calibration and evaluation sizes) size ``layerif prune`` and ``layerif evaluate``."""
    from .experiments.pruning_study import NOTEBOOK

    return study.load_params(NOTEBOOK, profile)


def _load_kwargs(args) -> dict:
    """How ``layerif prune`` / ``evaluate`` load the model: the profile's ``model_dtype`` and
    ``device_map`` (:func:`layerif.notebook_params.load_options`), --dtype / --device-map
    overriding them."""
    from .notebook_params import load_options

    given = {"model_dtype": args.dtype, "device_map": args.device_map}
    return load_options({**_pruning_params(args.profile),
                         **{k: v for k, v in given.items() if v is not None}})


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

    config, load_kwargs = _eval_config(args), _load_kwargs(args)
    out = args.out or run.default_out(args.profile, args.model, config, dtype=load_kwargs["dtype"])
    check_writable(out, "--out")
    result = run.evaluate_and_save(args.model, config, out, device=args.device,
                                   overwrite=args.overwrite, load_kwargs=load_kwargs)
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
    parser = cli_parser.build()
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
