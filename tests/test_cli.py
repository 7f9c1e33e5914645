"""`layerif scores` / `layerif allocate`: thin over the package, one-line errors."""
import io

import pandas as pd
import pytest

from layerif import ScoreConfig, allocate, cli, layer_scores, study
from layerif.data import load_task


@pytest.fixture
def scores_dir(tiny, tmp_path):
    model, tok = tiny
    config = ScoreConfig(n_train=6, n_val=3, max_length=24, batch_size=3, device="cpu")
    s = layer_scores(model, tok, load_task("mrpc", "train", n=6),
                     load_task("mrpc", "validation", n=3), config, task="mrpc", progress=False)
    return s.save(tmp_path / "scores"), s


def test_allocate_experts_csv_equals_package(scores_dir, capsys):
    path, s = scores_dir
    assert cli.main(["allocate", "experts", str(path), "--total", "10", "--beta", "2"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out), index_col="layer")
    expected = allocate.experts(s.aggregate("positive"), 10, 2.0)
    assert table["experts"].tolist() == expected.tolist()
    assert table["score"].to_numpy() == pytest.approx(s.aggregate("positive").to_numpy())


def test_allocate_refuses_to_overwrite_and_names_bad_arguments(scores_dir, tmp_path, capsys):
    path, _ = scores_dir
    out = tmp_path / "experts.csv"
    assert cli.main(["allocate", "experts", str(path), "--total", "10", "--out", str(out)]) == 0
    with pytest.raises(SystemExit) as err:
        cli.main(["allocate", "experts", str(path), "--total", "10", "--out", str(out)])
    assert err.value.code == 2 and "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["allocate", "experts", str(path)])
    assert "--total is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["allocate", "experts", str(tmp_path / "nothing"), "--total", "4"])
    assert "holds no manifest.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["allocate", "experts", str(path), "--total", "2"])
    assert "total=2" in capsys.readouterr().err


# ----------------------------------------------------------------------------- layerif prune
@pytest.fixture
def tiny_dir(save_tiny):
    """The tiny Llama saved as a local checkpoint (the CLI loads by name)."""
    return save_tiny()


def _ratios_csv(path, values, index=None):
    """A CSV in the form `layerif allocate sparsity --out` writes (layer, score, sparsity)."""
    ratios = pd.Series(values, index=pd.Index(index or range(len(values)), name="layer"),
                       name="sparsity")
    out = ratios.to_frame()
    out.insert(0, "score", -ratios)
    path.write_text(out.to_csv())
    return path


def _fails(argv, capsys, *needles):
    with pytest.raises(SystemExit) as err:
        cli.main(argv)
    text = capsys.readouterr().err
    assert err.value.code == 2, text
    lines = [line for line in text.splitlines() if line.startswith("layerif")]
    assert len(lines) == 1, text  # one error line (argparse prints its usage above it)
    for needle in needles:
        assert needle in lines[0], text
    return lines[0]


def test_prune_prunes_evaluates_saves_and_reloads(tiny_dir, tmp_path, capsys):
    from layerif import store
    from layerif.evaluate import EvalConfig
    from layerif.prune import pruned_identity, PruneConfig

    csv = _ratios_csv(tmp_path / "ratios.csv", [0.3, 0.5, 0.6, 0.4])
    out = tmp_path / "out"
    argv = ["prune", str(tiny_dir), "--allocation", str(csv), "--method", "sparsegpt",
            "--profile", "smoke", "--device", "cpu", "--out", str(out), "--tasks", "boolq",
            "--eval-limit", "2"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "computed" in printed and "perplexity" in printed
    report = store.load_frame(out / "sparsity")
    for layer, ratio in enumerate([0.3, 0.5, 0.6, 0.4]):
        assert report.loc[layer, "self_attn.q_proj"] == int(32 * 32 * ratio) / (32 * 32)
    evaluation = store.load_frame(out / "evaluation")
    assert list(evaluation.index) == [("boolq_passages", "perplexity"), ("boolq", "acc"),
                                      ("boolq", "acc_norm"), ("boolq", "margin")]
    assert evaluation.loc[("boolq", "acc"), "n"] == 2
    assert evaluation.loc[("boolq_passages", "perplexity"), "value"] > 1
    params = study.load_params("05_pruning", "smoke")  # the profile's sizes
    config = PruneConfig(**params["prune"], method="sparsegpt")
    evaluation = EvalConfig(**params["evaluation"]).replace(tasks=("boolq",), n_examples=2)
    ident = pruned_identity(config, pd.Series([0.3, 0.5, 0.6, 0.4]), str(tiny_dir), evaluation)
    assert store.load_if_matching(out / "evaluation", ident) is not None
    # the same identity is loaded, not recomputed
    assert cli.main(argv) == 0
    assert "loaded" in capsys.readouterr().out
    # another identity in the same folder is refused (and nothing is pruned again)
    _fails(["prune", str(tiny_dir), "--sparsity", "0.5", "--profile", "smoke", "--device", "cpu",
            "--out", str(out), "--tasks"], capsys, "another identity")


def test_prune_with_a_global_sparsity_and_no_zero_shot(tiny_dir, tmp_path, capsys):
    from layerif import store

    out = tmp_path / "uniform"
    assert cli.main(["prune", str(tiny_dir), "--sparsity", "0.5", "--method", "magnitude",
                     "--ties", "reference", "--profile", "smoke", "--device", "cpu",
                     "--out", str(out), "--tasks"]) == 0
    evaluation = store.load_frame(out / "evaluation")
    assert list(evaluation.index) == [("boolq_passages", "perplexity")]
    report = store.load_frame(out / "sparsity")
    # ties="reference" prunes at least one weight more than int(numel * s) per matrix
    assert (report["zeros"] >= report["params"] // 2 + 7).all()
    manifest = store.load_manifest(out / "sparsity")
    assert manifest["config"]["prune"]["ties"] == "reference"
    assert manifest["config"]["allocation"] == {"global": 0.5}


def test_prune_sizes_are_the_profiles_params_not_a_class_preset(tiny_dir, tmp_path, capsys):
    # Before: --profile cpu pruned with PruneConfig.cpu() (32 x 256) and evaluated with
    # EvalConfig.cpu() (60 examples, 32 x 256), not the book's params/cpu/05_pruning.yaml.
    import yaml

    from layerif import store
    from layerif.evaluate import EvalConfig
    from layerif.prune import PruneConfig, pruned_identity

    book = yaml.safe_load((study.repo_root() / "params" / "cpu" / "05_pruning.yaml").read_text())
    out = tmp_path / "cpu"
    assert cli.main(["prune", str(tiny_dir), "--sparsity", "0.5", "--method", "magnitude",
                     "--profile", "cpu", "--device", "cpu", "--out", str(out), "--tasks"]) == 0
    manifest = store.load_manifest(out / "evaluation")["config"]
    assert (manifest["prune"]["n_samples"], manifest["prune"]["seq_len"]) == (
        book["prune"]["n_samples"], book["prune"]["seq_len"])
    assert {k: manifest["evaluation"][k] for k in book["evaluation"]} == book["evaluation"]
    ident = pruned_identity(PruneConfig(method="magnitude", **book["prune"]), 0.5, str(tiny_dir),
                            EvalConfig(**book["evaluation"]).replace(tasks=()))
    assert store.load_if_matching(out / "evaluation", ident) is not None


def test_prune_argument_errors_name_the_argument_and_accepted_values(tiny_dir, tmp_path, capsys):
    base = ["prune", str(tiny_dir), "--profile", "smoke", "--device", "cpu",
            "--out", str(tmp_path / "o"), "--tasks"]
    _fails(base + ["--sparsity", "0.5", "--method", "random"], capsys,
           "--method", "'random'", "magnitude", "wanda", "sparsegpt")
    _fails(base + ["--sparsity", "0.5", "--profile", "gpu"], capsys, "--profile", "smoke")
    for bad in ("1.5", "0", "-0.2"):
        _fails(base + ["--sparsity", bad], capsys, f"--sparsity {float(bad)!r}", "(0, 1)")
    _fails(base, capsys, "--allocation", "--sparsity")  # neither given
    csv = _ratios_csv(tmp_path / "r.csv", [0.5] * 4)
    _fails(base + ["--sparsity", "0.5", "--allocation", str(csv)], capsys, "not allowed")
    _fails(base + ["--allocation", str(tmp_path / "missing.csv")], capsys,
           "--allocation", "missing.csv", "does not exist")
    bad_ratio = _ratios_csv(tmp_path / "bad.csv", [0.5, 1.2, 0.5, 0.5])
    _fails(base + ["--allocation", str(bad_ratio)], capsys, "bad.csv", "row 1", "[0, 1)")
    named = tmp_path / "named.csv"
    named.write_text("block,sparsity\na,0.5\nb,0.5\n")
    _fails(base + ["--allocation", str(named)], capsys, "named.csv", "block indices 0..L-1")
    wide = tmp_path / "wide.csv"
    wide.write_text("layer,a,b\n0,0.5,0.5\n")
    _fails(base + ["--allocation", str(wide)], capsys, "'sparsity' column")
    _fails(["prune", str(tiny_dir), "--sparsity", "0.5", "--tasks", "nope"], capsys,
           "tasks=['nope']", "boolq")
    _fails(base + ["--sparsity", "0.5", "--eval-limit", "0"], capsys, "--eval-limit", "'all'")
    # ratios that do not index the model's blocks: found once the model is loaded
    three = _ratios_csv(tmp_path / "three.csv", [0.5, 0.5, 0.5])
    _fails(base + ["--allocation", str(three)], capsys, "--allocation", "blocks [0, 1, 2]",
           "0..3")
    shifted = _ratios_csv(tmp_path / "shifted.csv", [0.5] * 4, index=[1, 2, 3, 4])
    _fails(base + ["--allocation", str(shifted)], capsys, "blocks [1, 2, 3, 4]", "0..3")
    assert not (tmp_path / "o").exists()  # nothing was saved


# ----------------------------------------------------------------------------- layerif evaluate
def test_evaluate_prints_saves_and_reloads(tiny_dir, tmp_path, capsys):
    from layerif import store
    from layerif.evaluate import EvalConfig, run

    out = tmp_path / "ev"
    argv = ["evaluate", str(tiny_dir), "--profile", "smoke", "--tasks", "boolq", "rte",
            "--n-examples", "2", "--device", "cpu", "--out", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "perplexity" in printed and f"computed: {out}" in printed
    table = store.load_frame(out)
    assert list(table.index) == [("boolq_passages", "perplexity")] + [
        (t, m) for t in ("boolq", "rte") for m in ("acc", "acc_norm", "margin")]
    assert (table.xs("acc", level="metric")["n"] == 2).all()
    assert 0 <= table.loc[("rte", "acc"), "value"] <= 1
    params = study.load_params("05_pruning", "smoke")
    config = EvalConfig(**params["evaluation"]).replace(tasks=("boolq", "rte"), n_examples=2)
    assert store.load_if_matching(out, run.evaluation_identity(str(tiny_dir), config))
    assert cli.main(argv) == 0  # the same identity: loaded, not recomputed
    assert f"loaded: {out}" in capsys.readouterr().out
    _fails(argv[:-2] + ["--out", str(out), "--n-examples", "3"], capsys, "another identity")
    # the default folder depends on the evaluation config, so other sizes never collide
    assert run.default_out("smoke", "smollm2-135m", config) != run.default_out(
        "smoke", "smollm2-135m", config.replace(n_examples=3))
    assert run.default_out("smoke", "a/b", config).parent.name == "a--b"  # store.slug


def test_evaluate_and_prune_take_the_dtype_into_the_identity_and_the_folder(tiny_dir, tmp_path, capsys):
    """--dtype bfloat16: the model loads in bfloat16, the identity says so, the default folder
    is its own, and a float32 result is never read or replaced as a bfloat16 one."""
    from layerif import store
    from layerif.evaluate import EvalConfig, run

    out = tmp_path / "ev"
    argv = ["evaluate", str(tiny_dir), "--profile", "smoke", "--tasks", "rte", "--n-examples",
            "2", "--device", "cpu", "--out", str(out)]
    assert cli.main(argv + ["--dtype", "bfloat16"]) == 0
    assert store.load_manifest(out)["model_dtype"] == "bfloat16"
    _fails(argv + ["--dtype", "float32"], capsys, "another identity")
    config = EvalConfig(**study.load_params("05_pruning", "smoke")["evaluation"]).replace(
        tasks=("rte",), n_examples=2)
    assert run.default_out("smoke", "m", config, dtype="bfloat16").name == (
        run.default_out("smoke", "m", config).name + "-bfloat16")
    assert run.default_out("smoke", "m", config, dtype="float32") == run.default_out("smoke", "m", config)
    pruned = tmp_path / "pr"
    assert cli.main(["prune", str(tiny_dir), "--sparsity", "0.5", "--profile", "smoke", "--tasks",
                     "--device", "cpu", "--dtype", "bfloat16", "--out", str(pruned)]) == 0
    assert store.load_manifest(pruned / "evaluation")["model_dtype"] == "bfloat16"
    _fails(["prune", str(tiny_dir), "--sparsity", "0.5", "--profile", "smoke", "--dtype",
            "float64"], capsys, "--dtype")


# ----------------------------------------------------------------------------- --help and errors
SUBCOMMANDS = ["run", "book", "status", "scores", "allocate", "prune", "evaluate", "describe",
               "sync-notebooks", "tasks"]


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main([command, "--help"])
    assert err.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: layerif {command}")
    assert len(text.split()) > 12, text  # more than the usage line: what it does


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = capsys.readouterr().out
    assert all(command in text for command in SUBCOMMANDS)


BAD = [
    (["run", "nope"], ["name='nope'", "00_model_and_data"]),
    (["run", "--params", "p.yaml"], ["--params needs notebook names", "00_model_and_data"]),
    (["run", "00_model_and_data", "--params", "/no/such.yaml"], ["--params", "does not exist"]),
    (["run", "--profile", "gpu"], ["--profile", "'gpu'", "smoke", "cpu", "paper"]),
    (["book", "--profile", "laptop"], ["--profile", "'laptop'", "smoke", "cpu", "paper"]),
    (["status", "--profile", "x"], ["--profile", "'x'", "smoke"]),
    (["scores", "mrpc", "--n-train", "many"], ["--n-train", "'many'", "int"]),
    (["allocate", "clusters", "x"], ["kind", "'clusters'", "experts", "sparsity"]),
    (["allocate", "experts", "x", "--aggregation", "mean"], ["--aggregation", "'mean'", "top"]),
    (["evaluate", "smollm2-135m", "--tasks", "nope"], ["tasks=['nope']", "boolq", "hellaswag"]),
    (["evaluate", "smollm2-135m", "--n-examples", "0"], ["--n-examples", "'0'", "'all'"]),
    (["evaluate", "smollm2-135m", "--backend", "hf"], ["--backend", "'hf'", "lm-eval"]),
    (["evaluate", "smollm2-135m", "--profile", "big"], ["--profile", "'big'", "paper"]),
    (["describe", "no-such-model"], ["name='no-such-model'", "smollm2-135m", "gemma3-270m"]),
    (["frobnicate"], ["'frobnicate'", "run", "evaluate"]),
]


@pytest.mark.parametrize("argv, needles", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_arguments_give_one_line_naming_them(argv, needles, capsys):
    _fails(argv, capsys, *needles)


# ----------------------------------------------------------------------------- scripts/gpu_smoke.sh
def test_gpu_smoke_script_is_valid_and_covers_the_cuda_test_in_both_dtypes():
    import os
    import re
    import subprocess
    import sys
    from pathlib import Path

    import torch

    script = Path(__file__).resolve().parent.parent / "scripts" / "gpu_smoke.sh"
    assert os.access(script, os.X_OK), f"{script} is not executable"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    text = script.read_text()
    assert "set -euo pipefail" in text and "tests/test_cuda.py" in text
    assert "--profile smoke" in text
    dtypes = re.search(r"for dtype in ([\w ]+); do", text).group(1).split()
    assert {"float32", "bfloat16"} <= set(dtypes)
    cuda_test = (script.parent.parent / "tests" / "test_cuda.py").read_text()
    assert all(f'"{d}"' in cuda_test for d in dtypes)  # test_cuda.py accepts each of them
    if not torch.cuda.is_available():  # here it must stop at once, saying why
        done = subprocess.run(["bash", str(script)], capture_output=True, text=True,
                              env={**os.environ, "PYTHON": sys.executable})
        assert done.returncode != 0 and "no CUDA device" in done.stderr


# ------------------------------------------------------------------------------- layerif moe
def test_moe_trains_an_allocation_csv_evaluates_and_reloads(tiny_dir, tmp_path, capsys):
    from layerif import store

    csv = tmp_path / "experts.csv"
    csv.write_text(pd.DataFrame({"score": [-1.0, -2.0, -3.0, -4.0], "experts": [1, 2, 3, 2]},
                                index=pd.Index(range(4), name="layer")).to_csv())
    argv = ["moe", str(tiny_dir), "sst2", "--allocation", str(csv), "--profile", "smoke",
            "--device", "cpu", "--results", str(tmp_path / "res"), "--n-train", "4", "--n-eval", "3"]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "computed" in printed and "on 3 examples" in printed
    folder = next((tmp_path / "res" / "moe").rglob("manifest.json")).parent
    manifest = store.load_manifest(folder)
    assert manifest["config"]["experts"] == [1, 2, 3, 2]
    assert manifest["config"]["per_block"] == 2.0 and len(manifest["extra"]["history"]) == 1
    assert cli.main(argv) == 0
    assert "loaded" in capsys.readouterr().out


def test_moe_argument_errors(tiny_dir, tmp_path, capsys):
    base = ["moe", str(tiny_dir), "sst2", "--profile", "smoke", "--device", "cpu",
            "--results", str(tmp_path)]
    _fails(base + ["--method", "AlphaLoRA", "--allocation", "x.csv"], capsys, "--allocation",
           "--method")
    _fails(base + ["--method", "AlphaLoRA", "--n-train", "0"], capsys, "--n-train", "'all'")
    _fails(base + ["--method", "AlphaLoRA", "--profile", "big"], capsys, "--profile", "cpu")
    bad = tmp_path / "bad.csv"
    bad.write_text("layer,a,b\n0,1,2\n")
    _fails(base + ["--allocation", str(bad)], capsys, "--allocation", "bad.csv", "'experts' column")


def test_scores_sizes_are_the_profiles_params():
    # Before: `layerif scores --profile cpu` used ScoreConfig.cpu() (128 / 32 examples),
    # not notebook 01's params/cpu sizes (32 / 8 for SmolLM2, 16 / 8 for Gemma).
    import yaml

    from layerif.experiments.scoring import score_config

    for profile in study.PROFILES:
        book = yaml.safe_load((study.repo_root() / "params" / profile / "01_layer_scores.yaml").read_text())
        params = study.load_params("01_layer_scores", profile)
        first = next(iter(book["sizes"].values()))
        for model, sizes in [*book["sizes"].items(), ("my/checkpoint", first)]:
            got = score_config(params, model)
            assert (got.n_train, got.n_val) == (sizes["n_train"], sizes["n_val"]), (profile, model)
            assert (got.max_length, got.batch_size) == (book["max_length"], book["batch_size"])
            assert got.memory_budget_gb == book.get("memory_budget_gb", 8.0)
        assert score_config(params, "smollm2-135m", n_val=3).n_val == 3  # --n-val
    assert score_config({}, "x") == ScoreConfig(memory_budget_gb=8.0)  # no params file


def test_scores_checks_every_task_before_scoring_any(tmp_path, monkeypatch, capsys):
    # The pool needs one validation example per pruning task: with --n-val 4 the command
    # must fail before scoring mrpc (it used to save mrpc, then fail on the pool).
    monkeypatch.setenv("LAYERIF_ROOT", str(tmp_path))
    # (no params/ under this root, so both sizes are given)
    _fails(["scores", "mrpc", "pruning_pool", "--n-train", "8", "--n-val", "4", "--profile",
            "smoke"], capsys, "layerif scores: error: n_val=4 is invalid", "pruning_pool")
    assert not (tmp_path / "results").exists()


# ------------------------------------------- issue 24: expected failures are one line, exit 2
def _saved_model(path, poison=None, tokenizer=True):
    """The tiny Llama saved as a checkpoint, optionally with one NaN weight at ``poison``."""
    import torch

    from layerif.testing import tiny_model

    model, tok = tiny_model()
    if poison is not None:
        with torch.no_grad():
            model.get_submodule(poison).weight.view(-1)[7] = float("nan")
    model.save_pretrained(path)
    if tokenizer:
        tok.save_pretrained(path)
    return path


def test_prune_of_a_model_with_one_nan_weight_exits_2_and_saves_nothing(tmp_path, capsys):
    # Before: exit 0, perplexity NaN, global sparsity 0.1667, all of it saved as computed.
    model = _saved_model(tmp_path / "nan-model", poison="model.layers.2.mlp.down_proj")
    out = tmp_path / "out"
    for method in ("wanda", "magnitude"):
        _fails(["prune", str(model), "--sparsity", "0.5", "--method", method, "--profile",
                "smoke", "--device", "cpu", "--out", str(out), "--tasks"], capsys,
               "model.layers.2.mlp.down_proj: weights hold 1 NaN and 0 inf")
        assert not out.exists()


def test_moe_allocation_counts_must_be_whole_numbers(tiny_dir, tmp_path, capsys):
    # Before: 2.5 trained with 2 experts (the run folder said 2.75); NaN gave a pandas error.
    base = ["moe", str(tiny_dir), "sst2", "--profile", "smoke", "--device", "cpu",
            "--results", str(tmp_path / "res")]
    for row, value in ((1, "2.5"), (2, ""), (3, "two"), (0, "0")):
        counts = ["3", "2", "2", "3"]
        counts[row] = value
        csv = tmp_path / f"experts-{row}.csv"
        csv.write_text("layer,score,experts\n" + "".join(
            f"{i},-1.0,{c}\n" for i, c in enumerate(counts)))
        _fails(base + ["--allocation", str(csv)], capsys, f"experts-{row}.csv", f"row {row}",
               "whole number >= 1")
    assert not (tmp_path / "res").exists()


def test_read_experts_reads_what_allocate_writes(tmp_path):
    from layerif.moe.io import read_experts

    csv = tmp_path / "e.csv"
    csv.write_text("layer,score,experts\n1,-2.0,4\n0,-1.0,3.0\n")
    experts = read_experts(csv)
    assert experts.to_dict() == {0: 3, 1: 4} and experts.dtype == int
    assert experts.index.name == "layer" and experts.name == "experts"


def test_model_paths_devices_and_tokenizers_fail_in_one_line(tmp_path, capsys, monkeypatch):
    import torch

    # a nonexistent absolute path is not sent to the hub ("Repo id must be in the form ...")
    _fails(["describe", str(tmp_path / "no" / "such-model")], capsys, "such-model",
           "does not exist")
    _fails(["prune", "/no/such/model", "--sparsity", "0.5", "--device", "cpu",
            "--out", str(tmp_path / "o"), "--tasks"], capsys, "'/no/such/model' does not exist")
    # a checkpoint without tokenizer files says so (not "install sentencepiece or tiktoken")
    bare = _saved_model(tmp_path / "bare", tokenizer=False)
    _fails(["describe", str(bare)], capsys, "holds no tokenizer files", "save_pretrained")
    if not torch.cuda.is_available():  # --device cuda fails at once, before the model loads
        monkeypatch.setattr("layerif.models.load_model", lambda *a, **k: pytest.fail("loaded"))
        _fails(["prune", str(bare), "--sparsity", "0.5", "--device", "cuda", "--out",
                str(tmp_path / "o"), "--tasks"], capsys, "device='cuda' is unavailable")
        _fails(["evaluate", str(bare), "--device", "cuda:1", "--tasks"], capsys, "cuda:1")
    assert not (tmp_path / "o").exists()


def _read_only(monkeypatch, folder):
    """``folder`` made read-only; as root (who writes anyway) os.access is made to say so,
    as it does for every other user."""
    import os

    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, mode, *a, **k: False if (
            str(p) == str(folder) and mode & os.W_OK) else real(p, mode, *a, **k))


def test_a_read_only_results_folder_is_refused_before_any_work(tiny_dir, tmp_path, capsys,
                                                               monkeypatch):
    # Before: the scores were computed first, then the save failed with chained tracebacks.
    monkeypatch.setenv("LAYERIF_ROOT", str(tmp_path))
    _read_only(monkeypatch, tmp_path / "results")
    monkeypatch.setattr("layerif.models.load_model", lambda *a, **k: pytest.fail("loaded"))
    try:
        _fails(["scores", "mrpc", "--profile", "smoke", "--model", str(tiny_dir)], capsys,
               "is not writable", str(tmp_path / "results"))
        _fails(["evaluate", str(tiny_dir), "--profile", "smoke", "--device", "cpu", "--tasks",
                "--out", str(tmp_path / "results" / "e")], capsys, "--out", "not writable")
        _fails(["prune", str(tiny_dir), "--sparsity", "0.5", "--profile", "smoke", "--device",
                "cpu", "--tasks"], capsys, "--out", "not writable")
        _fails(["moe", str(tiny_dir), "sst2", "--method", "AlphaLoRA", "--profile", "smoke",
                "--device", "cpu"], capsys, "--results", "not writable")
    finally:
        (tmp_path / "results").chmod(0o755)
    assert list((tmp_path / "results").iterdir()) == []


def test_scores_methods_must_name_methods(capsys):
    # Before: `--methods ,` gave a KeyError traceback.
    for bad in (",", "datainf,nope", "exact,exact"):
        _fails(["scores", "mrpc", "--profile", "smoke", "--methods", bad], capsys,
               f"--methods={bad!r}", "datainf, hessian_free, exact")


def test_a_full_disk_while_saving_is_one_line(tiny_dir, tmp_path, capsys, monkeypatch):
    # Before: torch.save on a full disk raised "basic_ios::clear: iostream error". Every
    # file write goes to /dev/full here, which fails with the kernel's ENOSPC.
    import builtins
    import pathlib

    monkeypatch.setenv("LAYERIF_ROOT", str(tmp_path))
    real_open = builtins.open

    def full_disk(self, data):
        with real_open("/dev/full", "wb") as fh:
            fh.write(data)
            fh.flush()

    monkeypatch.setattr(pathlib.Path, "write_bytes", full_disk)
    _fails(["scores", "mrpc", "--profile", "smoke", "--model", str(tiny_dir), "--n-train", "3",
            "--n-val", "2"], capsys, "no space left on the device", "--results")
    assert not list((tmp_path / "results").rglob("influence.pt"))


def test_an_unexpected_failure_keeps_its_traceback(monkeypatch):
    def bug(*args, **kwargs):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr("layerif.study.status", bug)
    with pytest.raises(KeyError, match="a bug"):
        cli.main(["status", "--profile", "smoke"])


def test_allocate_sparsity_target_above_the_cap_names_target(scores_dir, capsys):
    # Before: "clip=0.99 is invalid", an option `layerif allocate` does not have.
    path, _ = scores_dir
    line = _fails(["allocate", "sparsity", str(path), "--target", "0.995"], capsys,
                  "--target=0.995", "(0, 0.99)", "capped at 0.99")
    assert "clip=" not in line


def test_allocate_sparsity_from_scores_of_a_local_checkpoint(save_tiny, tmp_path, monkeypatch, capsys):
    # A local folder's model id is its weights' fingerprint; the model is loaded by its label.
    monkeypatch.setenv("LAYERIF_ROOT", str(tmp_path))
    folder = save_tiny(4)
    assert cli.main(["scores", "mrpc", "--model", str(folder), "--profile", "smoke",
                     "--n-train", "6", "--n-val", "3", "--methods", "datainf"]) == 0
    (scores,) = tmp_path.glob("results/smoke/scores/*/mrpc/datainf")
    capsys.readouterr()
    assert cli.main(["allocate", "sparsity", str(scores), "--target", "0.5"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out), index_col="layer")
    assert len(table) == 4 and table["sparsity"].between(0, 1).all()
