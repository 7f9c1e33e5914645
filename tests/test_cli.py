"""`layerif scores` / `layerif allocate`: thin over the package, one-line errors."""
import io

import pandas as pd
import pytest

from layerif import ScoreConfig, allocate, cli, layer_scores
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
    config = PruneConfig.preset("smoke", method="sparsegpt")
    evaluation = EvalConfig.smoke().replace(tasks=("boolq",), n_examples=2)
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
    config = EvalConfig.smoke().replace(tasks=("boolq", "rte"), n_examples=2)
    assert store.load_if_matching(out, run.evaluation_identity(str(tiny_dir), config))
    assert cli.main(argv) == 0  # the same identity: loaded, not recomputed
    assert f"loaded: {out}" in capsys.readouterr().out
    _fails(argv[:-2] + ["--out", str(out), "--n-examples", "3"], capsys, "another identity")
    # the default folder depends on the evaluation config, so other sizes never collide
    assert run.default_out("smoke", "smollm2-135m", config) != run.default_out(
        "smoke", "smollm2-135m", config.replace(n_examples=3))
    assert run.default_out("smoke", "a/b", config).parent.name == "a-b"


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
    _fails(base + ["--allocation", str(bad)], capsys, "allocation=", "'experts' column")
