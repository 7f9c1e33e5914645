"""The LoRA-MoE study (notebook 03): settings, stored runs, router load, the paired tables,
the notebook's run and verdicts, and ``layerif moe`` with model-only allocations.

References: router choices recomputed by hand in float64 from captured layer inputs; McNemar
and the paired t-test from scipy; accuracies and averages from hand-made per-example tables;
the notebook's invariants (shares, same examples, intervals around the estimates).
"""
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from layerif import ScoreConfig, cli, moe, store, study
from layerif.experiments import moe_compare
from layerif.experiments import moe_tables as tables
from layerif.experiments import scoring
from layerif.experiments import moe as moe_study
from layerif.experiments.moe import BASE, LORA, MoERun, MoESetting, MoEStudy, grid
from layerif.experiments.verdict import UNTESTABLE
from layerif.moe.usage import load_summary, router_load
from layerif.tokens import collate
from layerif.train import TrainConfig


def test_router_load_counts_top_k_of_real_tokens(tiny):
    model, tok = tiny
    moe.attach(model, [1, 3, 2, 4], dropout=0.0, seed=0)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, layer in moe.moe_layers(model):
            if layer.router is not None:
                layer.router.weight.copy_(torch.randn(layer.router.weight.shape, generator=g))
    ids, mask = collate([tok("the cat sat")["input_ids"], tok("a dog")["input_ids"]], 0)
    inputs = {}
    hooks = [m.register_forward_hook(lambda mod, a, o, n=n: inputs.__setitem__(n, a[0].detach()))
             for n, m in moe.moe_layers(model)]
    model.eval()
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask)
    for h in hooks:
        h.remove()
    load = router_load(model, [(ids, mask)])
    keep = mask.reshape(-1).bool()
    for name, layer in moe.moe_layers(model):
        if layer.router is None:
            assert name not in set(load["path"])
            continue
        h = inputs[name].reshape(-1, layer.in_features)[keep].double()
        probs = torch.softmax(h @ layer.router.weight.double().T, dim=-1)
        expected = np.bincount(probs.topk(layer.top_k, dim=-1).indices.reshape(-1).numpy(),
                               minlength=layer.n_experts)
        got = load[load["path"] == name].sort_values("expert")
        assert got["count"].tolist() == expected.tolist()
        assert got["count"].sum() == layer.top_k * int(mask.sum())
        assert got["share"].sum() == pytest.approx(1.0)


def test_load_summary_on_hand_made_shares():
    load = pd.DataFrame({"path": ["a"] * 4 + ["b"] * 4, "layer": [3] * 8, "experts": [4] * 8,
                         "expert": [0, 1, 2, 3] * 2, "count": [1] * 8,
                         "share": [0.25] * 4 + [0.97, 0.01, 0.01, 0.01]})
    out = load_summary(load)
    assert out.index.tolist() == [3] and out.loc[3, "experts"] == 4
    assert out.loc[3, "used"] == pytest.approx((4 + 1) / 2)
    p = np.array([0.97, 0.01, 0.01, 0.01])
    assert out.loc[3, "effective"] == pytest.approx((4 + np.exp(-(p * np.log(p)).sum())) / 2)


def test_grid_builds_every_setting_once():
    out = grid(["a", "b"], ["X", "Y"], seeds=[0], spread={"methods": ["X"], "seeds": [0, 1]},
               budgets={2.5: ["X", "Z"]}, budget_tasks=["b"])
    assert len(out) == len(set(out)) == 4 + 2 + 2
    assert MoESetting("X", "a", 5.0, 1) in out and MoESetting("Z", "b", 2.5, 0) in out
    assert MoESetting("Z", "a", 2.5, 0) not in out
    with pytest.raises(ValueError, match="tasks=\\[\\]"):
        grid([], ["X"])


def _allocations(n_blocks=4):
    index = pd.MultiIndex.from_tuples(
        [("LayerIF +ve", "sst2", 5.0), ("AlphaLoRA", "(model only)", 5.0)],
        names=["method", "task", "per_block"])
    table = pd.DataFrame([[2, 8, 5, 5], [5, 5, 6, 4]], index=index,
                         columns=pd.RangeIndex(n_blocks, name="layer"))
    table["total"] = table.sum(axis=1)
    return table


@pytest.mark.slow
def test_study_runs_resume_and_detach(save_tiny, tmp_path):
    path = str(save_tiny(4))
    study = MoEStudy(tmp_path, path, ["sst2"], moe.MoEConfig(rank=2, alpha=4.0, dropout=0.0),
                     TrainConfig(epochs=1, batch_size=2, lr=1e-2, max_length=64), n_train=4,
                     n_eval=5, allocations=_allocations(), progress=False)
    base = {n: p.detach().clone() for n, p in study.model.named_parameters()}
    settings = [MoESetting("LayerIF +ve", "sst2"), MoESetting(BASE, "sst2"), MoESetting(LORA, "sst2")]
    runs = study.run_all(settings)
    assert study.log["status"].tolist() == ["computed"] * 3
    lif = runs[settings[0]]
    assert len(lif.history) == 2 and lif.info["trainable_params"] > 0
    assert lif.load["experts"].tolist() == [2, 8, 5, 5]
    # the rank-matched LoRA: rank 5 x 2 in every block, the experts' parameters without routers
    lora = runs[settings[2]]
    assert study.adapter_config(settings[2]).rank == 2 * 5 and lora.load.empty
    assert study.adapter_config(settings[2]).alpha == 4.0  # the experts' alpha
    routers = sum(p.numel() for n, p in _attached(study, settings[0]) if "router" in n)
    assert lora.info["trainable_params"] == lif.info["trainable_params"] - routers
    assert all(torch.equal(p, base[n]) for n, p in study.model.named_parameters())  # detached
    assert not hasattr(study.model, "_layerif_moe")
    again = study.run_all(settings)  # resumes from the store
    assert study.log["status"].tolist() == ["loaded"] * 3
    for s in settings:
        pd.testing.assert_frame_equal(again[s].examples, runs[s].examples)
        assert again[s].history.tolist() == pytest.approx(runs[s].history.tolist())
    assert {tuple(r.examples.index) for r in runs.values()}.__len__() == 1
    with pytest.raises(ValueError, match="no allocation"):
        study.run(MoESetting("LayerIF All", "sst2"))


def _attached(study, setting):
    """Parameters of the setting's adapter on a fresh copy of the study's model."""
    import copy
    model = moe.attach(copy.deepcopy(study.model), study.experts(setting), study.adapter_config(setting))
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _run(correct, margin=None, history=(1.0, 0.5)):
    correct = np.asarray(correct, dtype=bool)
    frame = pd.DataFrame({"correct": correct, "label": 0, "n_choices": 2,
                          "margin": np.asarray(margin if margin is not None else correct - 0.5, float)},
                         index=pd.Index([f"e{i}" for i in range(len(correct))], name="id"))
    return MoERun(frame, pd.Series(history, dtype=float), pd.DataFrame(),
                  {"train_seconds": 1.0, "eval_seconds": 1.0, "trainable_params": 10})


def _runs():
    rng = np.random.default_rng(0)
    out = {}
    for task in ("t1", "t2"):
        for method in ("LayerIF +ve", "AlphaLoRA", "MoLA 5555"):
            for seed in (0, 1):
                out[MoESetting(method, task, 5.0, seed)] = _run(rng.random(30) < 0.6)
        out[MoESetting("LayerIF +ve", task, 2.5, 0)] = _run(rng.random(30) < 0.5)
        out[MoESetting("AlphaLoRA", task, 2.5, 0)] = _run(rng.random(30) < 0.5)
        out[MoESetting("MoLA 1234", task, 2.5, 0)] = _run(rng.random(30) < 0.5)
    return out


def test_accuracy_table_and_seed_spread():
    runs = _runs()
    table = tables.accuracy_table(runs, 5.0)
    ex = lambda m, t, s: runs[MoESetting(m, t, 5.0, s)].examples["correct"].mean()
    assert table.loc["t1", "AlphaLoRA"] == pytest.approx((ex("AlphaLoRA", "t1", 0) + ex("AlphaLoRA", "t1", 1)) / 2)
    assert table.loc[tables.AVERAGE, "MoLA 5555"] == pytest.approx(table.loc[["t1", "t2"], "MoLA 5555"].mean())
    spread = tables.seed_spread(runs)
    assert len(spread) == 6
    r = spread.loc[("t2", "LayerIF +ve", 5.0)]
    assert r["range"] == pytest.approx(abs(ex("LayerIF +ve", "t2", 0) - ex("LayerIF +ve", "t2", 1)))


def test_paired_tests_match_scipy():
    runs = _runs()
    paired = moe_compare.paired_by_task(runs, "LayerIF +ve", ["AlphaLoRA"], seed=0)
    a = runs[MoESetting("LayerIF +ve", "t1", 5.0, 0)].examples["correct"].to_numpy()
    b = runs[MoESetting("AlphaLoRA", "t1", 5.0, 0)].examples["correct"].to_numpy()
    n01, n10 = int((~a & b).sum()), int((a & ~b).sum())
    p = sps.binomtest(n10, n01 + n10, 0.5).pvalue if n01 + n10 else 1.0
    assert paired.loc[("t1", "AlphaLoRA"), "McNemar p"] == pytest.approx(p)
    assert paired.loc[("t1", "AlphaLoRA"), "difference"] == pytest.approx(a.mean() - b.mean())
    t7 = moe_compare.versus(runs, "LayerIF +ve", {"AlphaLora": ("AlphaLoRA",), "Mola": ("MoLA 5555", "MoLA 1234")},
                       [2.5, 5.0], n_boot=500)
    cell = lambda m, t, pb: np.mean([r.examples["correct"].mean() for s, r in runs.items()
                                     if s.method == m and s.task == t and s.per_block == pb])
    keys = [("t1", 2.5), ("t1", 5.0), ("t2", 2.5), ("t2", 5.0)]
    mine = [cell("LayerIF +ve", *k) for k in keys]
    theirs = [cell("AlphaLoRA", *k) for k in keys]
    assert t7.loc["AlphaLora", "t-test p (per setting)"] == pytest.approx(sps.ttest_rel(mine, theirs).pvalue)
    assert t7.loc["AlphaLora", "settings"] == 4 and t7.loc["AlphaLora", "examples"] == 120
    mola = [cell("MoLA 1234", "t1", 2.5), cell("MoLA 5555", "t1", 5.0), cell("MoLA 1234", "t2", 2.5),
            cell("MoLA 5555", "t2", 5.0)]
    assert t7.loc["Mola", "average accuracy"] == pytest.approx(np.mean(mola))
    row = t7.loc["Mola"]
    assert row["bootstrap CI low"] <= row["LayerIF +ve - baseline"] <= row["bootstrap CI high"]
    default = moe_compare.paired_by_task(runs, "LayerIF +ve")  # every other method run at 5 per block
    assert default.index.get_level_values("baseline").unique().tolist() == ["AlphaLoRA", "MoLA 5555"]


def test_margin_tests_beside_accuracy_match_scipy():
    """The sensitive measure of every MoE comparison: the gold margin's paired t, per task
    (same seed) and pooled over Table 7's cells (each example's margin averaged over the
    family's methods and the seeds), equal to scipy's ttest_rel on the same numbers."""
    rng = np.random.default_rng(1)
    runs = {s: _run(r.examples["correct"].to_numpy(), rng.normal(size=30)) for s, r in _runs().items()}
    margin = lambda m, t, pb, s: runs[MoESetting(m, t, pb, s)].examples["margin"].to_numpy()
    paired = moe_compare.paired_by_task(runs, "LayerIF +ve", ["AlphaLoRA"], seed=1)
    a, b = margin("LayerIF +ve", "t2", 5.0, 1), margin("AlphaLoRA", "t2", 5.0, 1)
    assert paired.loc[("t2", "AlphaLoRA"), "margin p"] == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert paired.loc[("t2", "AlphaLoRA"), "margin difference"] == pytest.approx((a - b).mean())
    t7 = moe_compare.versus(runs, "LayerIF +ve", {"AlphaLora": ("AlphaLoRA",)}, [2.5, 5.0], n_boot=200)
    cell = lambda m, t, pb: np.mean([margin(m, t, pb, s) for s in (0, 1)
                                     if MoESetting(m, t, pb, s) in runs], axis=0)
    keys = [("t1", 2.5), ("t1", 5.0), ("t2", 2.5), ("t2", 5.0)]
    ours = np.concatenate([cell("LayerIF +ve", *k) for k in keys])
    theirs = np.concatenate([cell("AlphaLoRA", *k) for k in keys])
    row = t7.loc["AlphaLora"]
    assert row["margin p"] == pytest.approx(sps.ttest_rel(ours, theirs).pvalue)
    assert row["margin difference"] == pytest.approx((ours - theirs).mean())
    assert row["margin CI low"] < row["margin difference"] < row["margin CI high"]


def test_notebook_verdicts_restate_table7_with_the_one_rule():
    names = {"t1": "sst2", "t2": "csqa"}  # task labels the paper's Table 1 has rows for
    runs = {MoESetting(s.method, names[s.task], s.per_block, s.seed): r for s, r in _runs().items()}
    params = {"plans": {"m": {"tasks": ["sst2"]}}, "n_eval": 30}
    result = tables.notebook_tables({"m": runs}, pd.DataFrame(), params, "sizes")
    t7 = result.models["m"]["table7"]
    rows = moe_study.verdicts(result)
    assert [r.claim for r in rows] == ["LayerIF allocation beats AlphaLora (LoRA-MoE)",
                                       "LayerIF allocation beats Mola (LoRA-MoE)"]
    # the seed spread by hand: per (task, method) with two seeds, |acc(seed 0) - acc(seed 1)|
    acc = lambda m, t, s: runs[MoESetting(m, t, 5.0, s)].examples["correct"].mean()
    noise = np.mean([abs(acc(m, t, 0) - acc(m, t, 1)) for t in ("sst2", "csqa")
                     for m in ("LayerIF +ve", "AlphaLoRA", "MoLA 5555")])
    assert result.models["m"]["noise"] == pytest.approx(noise)
    r = t7.loc["AlphaLora"]
    diff = r["LayerIF +ve - baseline"]
    assert rows[0].ours == f"{100 * diff:+.1f} points over 4 settings (seed spread {100 * noise:.1f})"
    assert rows[0].p == r["bootstrap p"] and rows[0].statistic == pytest.approx(100 * diff)
    assert rows[0].interval == f"[{100 * r['bootstrap CI low']:+.2f}, {100 * r['bootstrap CI high']:+.2f}] points"
    # every gold label is 0, so the bar is "always answer 0" (100%): no task can rank the methods
    assert rows[0].verdict == UNTESTABLE and "chance bar" in rows[0].test
    assert rows[0].paper == "82.28 vs 79.30 (table7, Average Accuracy)"  # the paper's Table 7
    paired = result.models["m"]["paired"]
    assert f"m: per task and baseline (one seed, McNemar), {int((paired['McNemar p'] < 0.05).sum())} of " \
           f"{len(paired)} differences" in moe_study.summary(result)


def test_budget_table_and_curves():
    runs = _runs()
    fig2 = tables.budget_table(runs, {"LayerIF": ("LayerIF +ve",), "Mola": ("MoLA 5555", "MoLA 1234")})
    assert fig2.index.tolist() == [2.5, 5.0]
    at = lambda m, pb: np.mean([np.mean([r.examples["correct"].mean() for s, r in runs.items()
                                         if s.method == m and s.task == t and s.per_block == pb])
                                for t in ("t1", "t2")])
    assert fig2.loc[2.5, "Mola"] == pytest.approx(at("MoLA 1234", 2.5))
    assert fig2.loc[5.0, "LayerIF"] == pytest.approx(at("LayerIF +ve", 5.0))
    # a task run at one budget only is left out, so that every row averages the same tasks
    extra = {**runs, MoESetting("LayerIF +ve", "t3", 5.0, 0): _run([False] * 30)}
    pd.testing.assert_frame_equal(tables.budget_table(extra, {"LayerIF": ("LayerIF +ve",)}),
                                  fig2[["LayerIF"]])
    curves = tables.loss_curves(runs, "t1")
    assert list(curves.columns) == ["LayerIF +ve", "AlphaLoRA", "MoLA 5555"] and len(curves) == 2


def test_paper_comparison_keeps_printed_methods_and_run_tasks():
    table = pd.DataFrame({"LayerIF +ve": [0.8, 0.6], "MoLA 3578": [0.7, 0.5], BASE: [0.5, 0.4]},
                         index=["csqa", "sst2"])
    table.loc[tables.AVERAGE] = table.mean()
    out = tables.paper_comparison(table, "table1", {"sst2": "Cola", "csqa": "Common Q"}, "n")
    assert set(out.index.get_level_values(1)) == {"LayerIF (+ve)"}  # MoLA(3,5,7,8) is Table 4's
    assert out.loc[("Cola", "LayerIF (+ve)"), "ours"] == pytest.approx(60.0)
    out4 = tables.paper_comparison(table, "table4", {"sst2": "Cola", "csqa": "Common Q"}, "n")
    assert out4.loc[("Common Q", "MoLA(3,5,7,8)"), "ours"] == pytest.approx(70.0)
    assert "Average" not in out4.index.get_level_values(0)


def test_method_folders_are_plain_names():
    from layerif.experiments.moe import method_folder

    names = ["LayerIF +ve", "LayerIF Top 25%", "LayerIF All", BASE, LORA, "MoLA 2468", "AlphaLoRA"]
    folders = [method_folder(n) for n in names]
    assert len(set(folders)) == len(names)
    assert all(" " not in f and "%" not in f and "(" not in f for f in folders)
    assert folders[1] == "LayerIF-Top-25" and folders[4] == "LoRA-same-parameters"


def test_chance_check_uses_the_higher_of_chance_and_majority():
    from scipy import stats as sps

    ex = pd.DataFrame({"label": [0] * 8 + [1] * 2, "n_choices": [2] * 10,
                       "correct": [True] * 9 + [False], "margin": 0.0},
                      index=pd.Index([f"e{i}" for i in range(10)], name="id"))
    runs = {MoESetting(BASE, "t", 5.0, 0): MoERun(ex, pd.Series(dtype=float), pd.DataFrame(),
                                                 {"train_seconds": 0, "eval_seconds": 0})}
    out = tables.chance_check(runs).loc[("t", BASE, 5.0)]
    assert out["bar"] == pytest.approx(0.8) and out["chance"] == pytest.approx(0.5)
    assert out["p (acc > bar)"] == pytest.approx(sps.binomtest(9, 10, 0.8, alternative="greater").pvalue)
    assert not out["above bar"]


# -------------------------------------------------- notebook 03's run and ``layerif moe`` on the tiny model
@pytest.fixture(scope="module")
def tiny_study(save_tiny, tmp_path_factory):
    """The tiny checkpoint scored on sst2 (notebook 01's result) and notebook 03's run of it at
    smoke sizes: (params, results, result)."""
    path = str(save_tiny(4))
    results = tmp_path_factory.mktemp("moe_results")
    config = ScoreConfig(n_train=6, n_val=4, max_length=32, batch_size=4, device="cpu")
    label = scoring.score_tasks(path, ["sst2"], config, results, methods=("datainf",),
                                progress=False).index[0][0]
    params = {**study.load_params("03_lora_moe", "smoke"), "labels": [label], "plans": {path: {
        "tasks": [label], "methods": ["LayerIF +ve", "AlphaLoRA", "MoLA 5555", LORA, BASE],
        "spread": {"methods": ["LayerIF +ve", "MoLA 5555"], "seeds": [1]}}}}
    return params, results, moe_study.run(params, "smoke", results)


def test_notebook_run_invariants_and_read_only_rerun(tiny_study):
    params, results, result = tiny_study
    (model,) = params["plans"]
    frame = result.models[model]["frames"]
    assert len(frame) == 7 and frame["accuracy"].between(0, 1).all()
    assert (frame["n"] == params["n_eval"]).all()
    assert len({tuple(r.examples.index) for r in result.runs[model].values()}) == 1  # same examples
    t7 = result.models[model]["table7"].drop(index=result.ours)
    assert ((t7["bootstrap CI low"] <= t7["LayerIF +ve - baseline"] + 1e-9)
            & (t7["LayerIF +ve - baseline"] <= t7["bootstrap CI high"] + 1e-9)).all()
    assert set(result.log["status"]) == {"computed"}
    with store.read_only(moe_study.NOTEBOOK):  # notebook 10's way: everything is read back
        again = moe_study.run(params, "smoke", results)
    assert set(again.log["status"]) == {"loaded"}
    pd.testing.assert_frame_equal(tables.table(again, "table7"), tables.table(result, "table7"))
    assert moe_study.verdicts(again) == moe_study.verdicts(result)
    with store.read_only(moe_study.NOTEBOOK), pytest.raises(store.MissingResult, match="03_lora_moe"):
        moe_study.run({**params, "n_eval": params["n_eval"] - 1}, "smoke", results)


@pytest.mark.parametrize("method, experts", [("MoLA 5555", [5, 5, 5, 5]), (LORA, [1, 1, 1, 1]),
                                             ("AlphaLoRA", None)])
def test_cli_model_only_allocations_need_no_scores(save_tiny, tmp_path, method, experts):
    """Issue 24 item 7: ``layerif moe MODEL TASK --method 'MoLA 5555'`` (and AlphaLoRA, the plain
    LoRA) failed with "scores/.../datainf holds no manifest.json"."""
    argv = ["moe", str(save_tiny(4)), "csqa", "--method", method, "--profile", "smoke",
            "--device", "cpu", "--results", str(tmp_path)]
    assert cli.main(argv) == 0
    assert not (tmp_path / "scores").exists()
    manifest = store.load_manifest(next((tmp_path / "moe").rglob("manifest.json")).parent)
    smoke = study.load_params("03_lora_moe", "smoke")  # the sizes come from the profile's params
    assert len(manifest["data"]["train_ids"]) == smoke["n_train"]
    assert len(manifest["data"]["eval_ids"]) == smoke["n_eval"]
    got = manifest["config"]["experts"]
    assert got == experts if experts else (sum(got) == 20 and min(got) >= 1)  # 5 per block x 4
    if method == LORA:  # one LoRA per projection with the experts' parameters: rank 5 x r
        assert manifest["config"]["moe"]["rank"] == 5 * moe.MoEConfig.preset("smoke").rank


def test_cli_sizes_and_recipe_come_from_the_profile_params():
    for profile in ("smoke", "cpu", "paper"):
        params = study.load_params("03_lora_moe", profile)
        adapter, recipe = moe_study.recipe(params)
        assert adapter == moe.MoEConfig.preset(params["moe_preset"])
        assert recipe.identity()["max_length"] == params["train"].get(
            "max_length", recipe.preset(params["train_preset"]).max_length)
    cpu = moe_study.recipe(study.load_params("03_lora_moe", "cpu"))[1]
    # the committed cpu runs' recipe (formerly TrainConfig.cpu), field by field
    assert (cpu.epochs, cpu.lr, cpu.batch_size, cpu.grad_accum, cpu.warmup_steps, cpu.max_length) \
        == (2, 1e-3, 8, 1, 2, 128)
    with pytest.raises(ValueError, match="params="):
        moe_study.single_run("smollm2-135m", "csqa", "MoLA 5555", params={"profile": "cpu"})


# ----------------------------------------------------- issue 25: the right paper numbers, flagged
def test_table7_is_compared_with_the_mistral_stand_in_whatever_the_order():
    names = {"t1": "sst2", "t2": "csqa"}
    runs = {MoESetting(s.method, names[s.task], s.per_block, s.seed): r for s, r in _runs().items()}
    params = {"plans": {m: {"tasks": ["sst2"]} for m in ("gemma3-270m", "smollm2-135m")},
              "n_eval": 30}
    # Gemma first (alphabetical): Table 7 (Mistral-7B) must still pair with SmolLM2 (Table 1)
    result = tables.notebook_tables({"gemma3-270m": runs, "smollm2-135m": runs}, pd.DataFrame(),
                                    params, "sizes")
    assert tables.stand_in(["gemma3-270m", "smollm2-135m"], "table7") == "smollm2-135m"
    assert tables.stand_in(["gemma3-270m", "smollm2-135m"], "table4") == "gemma3-270m"
    t7 = result.table7_paper
    assert set(t7["note"].str.split(";").str[0]) == {"smollm2-135m"}
    p_rows = t7.xs("p-value", level="column")
    ours = result.models["smollm2-135m"]["table7"]
    # every p-value shown was computed (no NaN), none is subtracted from the paper's
    assert p_rows["ours"].notna().all() and p_rows["difference"].isna().all()
    assert p_rows.loc["AlphaLora", "ours"] == pytest.approx(ours.loc["AlphaLora", "t-test p (per setting)"])
    assert "LayerIF" not in p_rows.index
    acc = t7.xs("Average Accuracy", level="column")
    assert acc.loc["LayerIF", "ours"] == pytest.approx(100 * ours.loc["LayerIF +ve", "average accuracy"])
    # Gemma's verdict rows quote Table 4 (Gemma-7B), SmolLM2's Table 7 (Mistral-7B)
    rows = {(r.model, r.claim): r for r in moe_study.verdicts(result)}
    gemma = rows[("gemma3-270m", "LayerIF allocation beats AlphaLora (LoRA-MoE)")]
    assert gemma.paper == "87.81 vs 86.55 (table4, Average)" and gemma.where == "Table 4"
    assert rows[("smollm2-135m", "LayerIF allocation beats Mola (LoRA-MoE)")].paper == \
        "82.28 vs 78.97 (table7, Average Accuracy)"


def test_seed_counts_are_marked_and_identical_allocations_found():
    names = {"t1": "sst2", "t2": "csqa"}
    runs = {MoESetting(s.method, names[s.task], s.per_block, s.seed): r for s, r in _runs().items()}
    params = {"plans": {"m": {"tasks": ["sst2"]}}, "n_eval": 30}
    result = tables.notebook_tables({"m": runs}, pd.DataFrame(), params, "sizes")
    shown = tables.accuracy_shown(result)
    two = tables.accuracy_table(runs, 5.0).loc["sst2", "AlphaLoRA"]  # seeds 0 and 1
    assert shown.loc[("m", "sst2"), "AlphaLoRA"] == f"{100 * two:.1f}†"
    assert shown.loc[("m", tables.AVERAGE), "AlphaLoRA"].endswith("†") is False
    assert result.models["m"]["seeds"].loc["sst2", "AlphaLoRA"] == 2
    one = {MoESetting(s.method, s.task, s.per_block, 0): r for s, r in runs.items() if s.seed == 0}
    single = tables.notebook_tables({"m": one}, pd.DataFrame(), params, "sizes")
    assert "†" not in "".join(tables.accuracy_shown(single).to_numpy().ravel())
    alloc = pd.DataFrame([[1, 2, 3], [1, 2, 3], [2, 2, 2], [1, 2, 3]],
                         index=pd.MultiIndex.from_tuples(
                             [("LayerIF +ve", "a", 5.0), ("LayerIF All", "a", 5.0),
                              ("LayerIF Top 25%", "a", 5.0), ("LayerIF All", "b", 5.0)],
                             names=["method", "task", "per_block"]), columns=[0, 1, 2])
    alloc["total"] = alloc.sum(axis=1)
    found = tables.identical_allocations(alloc, set(alloc.index))
    assert found["identical allocations"].to_dict() == {("a", 5.0): "LayerIF +ve = LayerIF All"}
    # only trained settings count
    assert tables.identical_allocations(alloc, {("LayerIF +ve", "a", 5.0)}).empty


def test_paper_comparison_shows_no_difference_where_every_trained_model_is_at_chance():
    # Issue 25: "-59-point gaps" on CSQA, where the models are at chance, read as effects.
    idx = pd.MultiIndex.from_tuples(
        [("csqa", "Base model", 5.0), ("csqa", "AlphaLoRA", 5.0), ("mrpc", "Base model", 5.0),
         ("mrpc", "AlphaLoRA", 5.0)], names=["task", "method", "per_block"])
    chance = pd.DataFrame({"above bar": [False, False, False, True]}, index=idx)
    assert tables.tasks_at_chance(chance) == ["csqa"]
    acc = pd.DataFrame({"AlphaLoRA": [0.20, 0.70]}, index=["csqa", "mrpc"])
    out = tables.paper_comparison(acc, "table1", tables.TASK_ROWS, "n", ["csqa"])
    common, mrpc = out.xs("Common Q", level="row"), out.xs("MRPC", level="row")
    assert common["ours"].iloc[0] == pytest.approx(20.0) and common["difference"].isna().all()
    assert "at chance" in common["note"].iloc[0]
    assert mrpc["difference"].iloc[0] == pytest.approx(70.0 - mrpc["paper"].iloc[0])
