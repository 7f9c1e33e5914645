"""Data parallelism: two gloo processes give the single-process numbers.

One process group is launched once for the module: two worker processes run this file as a
script (``_checks`` under ``torchrun``'s environment, through
:func:`layerif.distributed.init_from_env`) while the test process runs the same ``_checks``
alone; the tests compare the two. Sizes are odd so the shards are uneven, and some cases
leave rank 1 without any example (it must still take part in every collective).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from layerif import distributed

ROOT = Path(__file__).resolve().parents[1]
WORLD = 2
TIMEOUT_S = 240

TRAIN = ["The cat sat on the mat.", "Paris is the capital of France.", "Two plus two is four.",
         "A short one.", "Influence functions estimate effects.", "Blocks differ."]
VAL = ["Is the sky blue? yes", "Water is wet.", "Three is odd."]

# name: (target, storage, n_train, n_val, methods, unit); methods None: config.method alone
SCORE_CASES = {
    "weights-memory": ("weights", "memory", 5, 3, ("datainf", "hessian_free", "exact"), "tensor"),
    "weights-stream": ("weights", "stream", 5, 3, ("datainf", "hessian_free"), "tensor"),
    "lora-memory": ("lora", "memory", 5, 1, ("datainf", "hessian_free"), "tensor"),
    "lora-stream": ("lora", "stream", 3, 3, ("datainf", "hessian_free"), "block"),
    "one-example": ("weights", "stream", 1, 1, None, "tensor"),
}
PRUNE_CASES = {"wanda-3": ("wanda", 3), "sparsegpt-3": ("sparsegpt", 3),
               "wanda-1": ("wanda", 1), "sparsegpt-1": ("sparsegpt", 1)}


# ----------------------------------------------------------------------------- the checks
def _examples(n: int):
    from layerif.data import Example

    out = []
    for i in range(n):
        choices = (" no", " yes", " maybe")[:2 + i % 2]
        label = i % len(choices)
        prompt = f"Is {i} a small number? Answer:"
        out.append(Example(id=f"t/{i}", prompt=prompt, choices=choices, label=label,
                           text=prompt + choices[label]))
    return out


def _score_checks(model, tok, save_dir: Path) -> dict:
    from layerif.scores import ScoreConfig, layer_scores

    out = {}
    for name, (target, storage, n_train, n_val, methods, unit) in SCORE_CASES.items():
        config = ScoreConfig(target=target, storage=storage, n_train=n_train, n_val=n_val,
                             unit=unit, batch_size=2, max_length=32, dtype=torch.float64,
                             device="cpu")
        res = layer_scores(model, tok, TRAIN, VAL, config, methods=methods, progress=False)
        res = {config.method: res} if methods is None else res
        for m, s in res.items():
            out[f"scores/{name}/{m}"] = s.values
            out[f"info/{name}/{m}"] = {k: s.info[k] for k in ("storage", "passes",
                                                              "n_train_tokens")}
            out[f"ids/{name}/{m}"] = (s.train_ids, s.val_ids)
    s.save(save_dir)
    out["saved"] = (save_dir / "manifest.json").exists()
    return out


def _prune_checks() -> dict:
    from layerif.models import linear_modules, transformer_blocks
    from layerif.prune import PruneConfig, prune_model, walk_blocks
    from layerif.testing import tiny_model

    calibration = torch.randint(4, 100, (3, 16), generator=torch.Generator().manual_seed(1))
    ratios = pd.Series([0.3, 0.5, 0.4, 0.6], index=pd.RangeIndex(4, name="layer"))
    model, _ = tiny_model(dtype=torch.float64)
    out = {f"stats/{kind}": {f"{layer}.{name}": stat.clone()
                             for layer, _, _, stats in walk_blocks(model, calibration, kind, 2, False)
                             for name, stat in stats.items()}
           for kind in ("act_sq_norm", "hessian")}
    for name, (method, rows) in PRUNE_CASES.items():
        model, _ = tiny_model(dtype=torch.float64)
        config = PruneConfig(method=method, n_samples=rows, seq_len=16, batch_size=2)
        prune_model(model, config, ratios, calibration[:rows], progress=False)
        out[f"prune/{name}"] = {f"{path}.{n}": m.weight.detach().clone()
                                for path, block in transformer_blocks(model)
                                for n, m in linear_modules(block)}
    return out


def _eval_checks(model, tok) -> dict:
    from layerif.evaluate import choice_logliks, perplexity, zero_shot

    tokens = torch.randint(4, 100, (3, 20), generator=torch.Generator().manual_seed(2))
    return {
        "choices/5": choice_logliks(model, tok, _examples(5), batch_size=2, progress=False),
        "choices/1": choice_logliks(model, tok, _examples(1), batch_size=2, progress=False),
        "zero_shot": zero_shot(model, tok, {"a": _examples(3), "b": _examples(4)}, batch_size=2,
                               per_example=True, progress=False),
        "ppl/3": perplexity(model, tokens, batch_size=2, progress=False),
        "ppl/1": perplexity(model, tokens[:1], batch_size=2, progress=False),
    }


def _checks(save_dir: Path) -> dict:
    """Everything compared, computed in this process (alone or as one rank of a group)."""
    from layerif.testing import tiny_model

    model, tok = tiny_model(dtype=torch.float64)
    return {**_score_checks(model, tok, save_dir), **_prune_checks(), **_eval_checks(model, tok),
            "rank": distributed.rank(), "world_size": distributed.world_size()}


def _worker(out_dir: Path) -> None:
    """One rank: join the group from torchrun's environment, run the checks, save them."""
    torch.set_num_threads(1)
    assert distributed.init_from_env(backend="gloo")
    try:
        result = _checks(out_dir / f"save-rank{distributed.rank()}")
        torch.save(result, out_dir / f"rank{distributed.rank()}.pt")
    finally:
        distributed.close()


# ----------------------------------------------------------------------------- launching
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(out_dir: Path) -> list[subprocess.Popen]:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()),
           "WORLD_SIZE": str(WORLD), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    procs = []
    for r in range(WORLD):
        log = open(out_dir / f"rank{r}.log", "w")
        procs.append(subprocess.Popen(
            [sys.executable, __file__, str(out_dir)], cwd=ROOT, stdout=log,
            stderr=subprocess.STDOUT, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)}))
        log.close()
    return procs


def _wait(procs: list[subprocess.Popen], out_dir: Path) -> None:
    """Wait for every worker; any failure or the timeout kills them all and fails."""
    deadline = time.monotonic() + TIMEOUT_S
    while any(p.poll() is None for p in procs):
        failed = any(p.poll() not in (None, 0) for p in procs)
        if failed or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    codes = [p.poll() for p in procs]
    if codes != [0] * len(procs):
        logs = "\n".join(f"--- rank {r} (exit {c}):\n" + (out_dir / f"rank{r}.log").read_text()[-3000:]
                         for r, c in enumerate(codes))
        pytest.fail(f"the {len(procs)} gloo workers did not all finish within {TIMEOUT_S} s: "
                    f"exit codes {codes}\n{logs}")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``(single, [rank 0, rank 1])``: the checks alone and in a 2-process group."""
    out_dir = tmp_path_factory.mktemp("distributed")
    procs = _launch(out_dir)
    try:
        single = _checks(out_dir / "save-single")  # while the workers run
        _wait(procs, out_dir)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    ranks = [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]
    return single, ranks


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("key", [f"{c}/{m}" for c, v in SCORE_CASES.items()
                                 for m in (v[4] or ("datainf",))])
def test_scores_equal_single_process(runs, key):
    single, ranks = runs
    ref = single[f"scores/{key}"]
    assert ref.dtype == torch.float64 and ref.abs().max() > 0
    for r, res in enumerate(ranks):
        assert res["rank"] == r and res["world_size"] == WORLD
        torch.testing.assert_close(res[f"scores/{key}"], ref, rtol=1e-10, atol=1e-10,
                                   msg=f"rank {r}, {key}")
        assert res[f"ids/{key}"] == single[f"ids/{key}"]
        assert res[f"info/{key}"] == single[f"info/{key}"]


def test_only_rank_0_saves(runs):
    single, ranks = runs
    assert single["saved"] and ranks[0]["saved"] and not ranks[1]["saved"]


@pytest.mark.parametrize("kind", ["act_sq_norm", "hessian"])
def test_calibration_statistics_equal_single_process(runs, kind):
    single, ranks = runs
    ref = single[f"stats/{kind}"]
    assert len(ref) == 4 * 7 and all(s.abs().max() > 0 for s in ref.values())
    for r, res in enumerate(ranks):
        assert res[f"stats/{kind}"].keys() == ref.keys()
        for name, stat in res[f"stats/{kind}"].items():
            torch.testing.assert_close(stat, ref[name], rtol=1e-12, atol=0, msg=f"rank {r} {name}")


@pytest.mark.parametrize("case", list(PRUNE_CASES))
def test_pruning_masks_equal_single_process(runs, case):
    single, ranks = runs
    ref = single[f"prune/{case}"]
    assert 0.2 < np.mean([float((w == 0).double().mean()) for w in ref.values()]) < 0.6
    for r, res in enumerate(ranks):
        for name, w in res[f"prune/{case}"].items():
            assert torch.equal(w == 0, ref[name] == 0), f"rank {r}, {case}, {name}"
            torch.testing.assert_close(w, ref[name], rtol=1e-10, atol=1e-12)


def test_evaluation_equals_single_process(runs):
    single, ranks = runs
    for r, res in enumerate(ranks):
        for key in ("choices/5", "choices/1"):
            pd.testing.assert_frame_equal(res[key], single[key], rtol=1e-12, obj=f"rank {r} {key}")
        pd.testing.assert_frame_equal(res["zero_shot"][0], single["zero_shot"][0], rtol=1e-12)
        pd.testing.assert_frame_equal(res["zero_shot"][1], single["zero_shot"][1], rtol=1e-12)
        for key in ("ppl/3", "ppl/1"):
            assert res[key] == pytest.approx(single[key], rel=1e-12), (r, key)
    assert list(single["choices/5"].index) == [f"t/{i}" for i in range(5)]


# ----------------------------------------------------------------------------- shard, alone
@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 4, 7, 10])
def test_shard_matches_array_split(n, world):
    items = list(range(100, 100 + n))
    reference = np.array_split(np.array(items, dtype=np.int64), world)  # first n % world get one more
    parts = [distributed.shard(items, r, world) for r in range(world)]
    assert [list(p) for p in parts] == [list(p) for p in reference]
    assert sum(parts, []) == items
    rows = torch.arange(2 * n).view(n, 2)
    for r in range(world):
        start, stop = distributed.shard_bounds(n, r, world)
        assert torch.equal(distributed.shard(rows, r, world), rows[start:stop])
        assert stop - start == len(reference[r])


def test_shard_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rank=2 is invalid"):
        distributed.shard([1, 2, 3], 2, 2)
    with pytest.raises(ValueError, match="n=-1 is invalid"):
        distributed.shard_bounds(-1, 0, 1)
    with pytest.raises(ValueError, match="world=0 is invalid"):
        distributed.shard_bounds(3, 0, 0)


def test_single_process_helpers_are_identities(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert not distributed.is_distributed()
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    t = torch.arange(6.0).view(2, 3)
    assert distributed.all_reduce_sum(t) is t
    assert distributed.gather_cat(t, dim=1) is t
    assert distributed.all_gather_objects({"a": 1}) == [{"a": 1}]
    assert distributed.broadcast_object("x") == "x"
    assert distributed.shard([1, 2, 3]) == [1, 2, 3]
    assert distributed.init_from_env() is False  # WORLD_SIZE unset: nothing to start


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
