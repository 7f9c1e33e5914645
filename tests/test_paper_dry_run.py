"""The paper profile's dry run (issue 23): every notebook with ``params/paper``, run on
random-weight stand-ins of the paper's models at a handful of examples.

The unit tests check the rewriting of parameters and the stand-ins against hand-written
expectations; the notebook tests run each notebook's code cells in this process (in run
order: later notebooks read the earlier ones' results) and check that what they saved was
computed by the paper path -- the paper presets apart from the listed sizes, on the
stand-in models -- and that nothing was written to the checkout's ``results/paper``.
"""
from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path

import pytest
import torch

from layerif import dry_run, study
from layerif.dry_run import rewrite

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = study.list_notebooks(REPO)
MODELS = {"mistralai/Mistral-7B-v0.1": "/m/mistral", "google/gemma-7b": "/m/gemma"}


# -- rewriting the parameters --------------------------------------------------------------
def test_rewrite_replaces_models_sizes_and_blocks_and_lists_each_change():
    paper = {"sizes": {"mistralai/Mistral-7B-v0.1": {"n_train": 300, "n_val": 50}},
             "models": ["mistralai/Mistral-7B-v0.1", "google/gemma-7b"], "tasks": ["mrpc", "sst2"],
             "calibration": [128, 2048], "evaluation": {"n_examples": None, "ppl_len": 2048},
             "loo": {"blocks": [-1, -8, -16], "seeds": [0, 1, 2, 3, 4]},
             "gain": {"blocks": [0, 4, 8, 12, 16, 20, 24, 28, 31]}, "sparsity": 0.7}
    dry, subs = rewrite("nb", paper, MODELS)
    assert dry == {"sizes": {"/m/mistral": {"n_train": 8, "n_val": 7}},
                   "models": ["/m/mistral", "/m/gemma"], "tasks": ["mrpc", "sst2"],
                   "calibration": [2, 32], "evaluation": {"n_examples": 2, "ppl_len": 32},
                   "loo": {"blocks": [-1, -2], "seeds": [0, 1]},
                   "gain": {"blocks": [0, 1, 2, 3]}, "sparsity": 0.7}
    assert [(s.where, s.paper, s.dry) for s in subs] == [
        ("sizes.<key mistralai/Mistral-7B-v0.1>", "mistralai/Mistral-7B-v0.1", "/m/mistral"),
        ("sizes.mistralai/Mistral-7B-v0.1.n_train", 300, 8),
        ("sizes.mistralai/Mistral-7B-v0.1.n_val", 50, 7),
        ("models[0]", "mistralai/Mistral-7B-v0.1", "/m/mistral"),
        ("models[1]", "google/gemma-7b", "/m/gemma"),
        ("calibration", [128, 2048], [2, 32]),
        ("evaluation.n_examples", None, 2), ("evaluation.ppl_len", 2048, 32),
        ("loo.blocks", [-1, -8, -16], [-1, -2]), ("loo.seeds", [0, 1, 2, 3, 4], [0, 1]),
        ("gain.blocks", [0, 4, 8, 12, 16, 20, 24, 28, 31], [0, 1, 2, 3])]
    assert all(s.notebook == "nb" for s in subs)
    assert subs[0].line() == ("dry run nb: sizes.<key mistralai/Mistral-7B-v0.1> = '/m/mistral' "
                              "instead of 'mistralai/Mistral-7B-v0.1' (random-weight stand-in)")


def test_rewrite_keeps_the_paper_model_dtype():
    """The stand-ins load in the dtype the paper run loads its 7B models in: ``model_dtype``
    is no size, so it passes unchanged and unlisted."""
    assert rewrite("nb", {"model_dtype": "bfloat16", "max_length": 128}, MODELS) == (
        {"model_dtype": "bfloat16", "max_length": 32},
        [dry_run.Substitution("nb", "max_length", 128, 32, "size")])


def test_rewrite_puts_the_offline_stand_in_for_a_hub_only_task_and_says_so():
    dry, subs = rewrite("nb", {"tasks": ["cola", "scienceqa:instruct", "mrpc"]}, MODELS)
    assert dry == {"tasks": ["sst2", "sciq:instruct", "mrpc"]}
    assert [(s.where, s.dry) for s in subs] == [("tasks[0]", "sst2"), ("tasks[1]", "sciq:instruct")]
    assert all("needs the hub" in s.why for s in subs)


@pytest.mark.parametrize("params, message", [
    ({"models": ["org/unknown-7b"]}, "models[0]='org/unknown-7b' is invalid"),
    ({"prune": {"n_calib": 128}}, "prune.n_calib=128 is invalid"),
])
def test_rewrite_refuses_what_it_cannot_shrink(params, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        rewrite("nb", params, MODELS)


def test_every_paper_parameter_file_rewrites_and_its_sizes_are_the_presets():
    """The paper profile's sizes are the paper presets', so the dry run's sizes (the only
    change besides models and data) replace exactly the presets' values."""
    from layerif.evaluate.suite import EvalConfig
    from layerif.prune import PruneConfig
    from layerif.scores import ScoreConfig

    paper = {n: study.load_params(n, "paper", REPO) for n in NOTEBOOKS}
    models = dict.fromkeys(dry_run.PAPER_MODELS, "/m/x")
    for name, params in paper.items():
        rewrite(name, params, models)  # raises on a size without a rule or an unknown model
    score, prune, evaluation = ScoreConfig.paper(), PruneConfig.paper(), EvalConfig.paper()
    sizes = paper["01_layer_scores"]["sizes"]["mistralai/Mistral-7B-v0.1"]
    assert (sizes["n_train"], sizes["n_val"]) == (score.n_train, score.n_val)
    assert paper["01_layer_scores"]["max_length"] == score.max_length
    for name in ("05_pruning", "07_ablation_smoothing", "08_ablation_granularity"):
        assert paper[name]["prune"] == {"n_samples": prune.n_samples, "seq_len": prune.seq_len}
        assert paper[name]["evaluation"] == {"n_examples": evaluation.n_examples,
                                             "ppl_samples": evaluation.ppl_samples,
                                             "ppl_len": evaluation.ppl_len}
    assert paper["04_sparsity_allocation"]["calibration"] == [prune.n_samples, prune.seq_len]
    assert (paper["03_lora_moe"]["moe_preset"], paper["03_lora_moe"]["train_preset"]) == ("paper", "paper")


# -- the stand-ins -------------------------------------------------------------------------
@pytest.mark.parametrize("shape, kv, attention_width", [
    ("mistral-7b", 1, 64),    # 32 query heads over 8 key/value heads: groups of 4
    ("llama2-7b", 4, 64),     # multi-head attention
    ("gemma-7b", 4, 88),      # q/k/v 4096 wide on a 3072 stream: 4/3 of 64, even head size
])
def test_stand_in_fields_keep_the_family_and_head_layout(shape, kv, attention_width):
    from layerif.bench.shapes import SHAPES

    fields = dry_run.stand_in_fields(shape)
    assert fields["model_type"] == SHAPES[shape]["model_type"]
    assert (fields["num_hidden_layers"], fields["hidden_size"], fields["num_attention_heads"]) == (4, 64, 4)
    assert fields["num_key_value_heads"] == kv
    assert fields["num_attention_heads"] * fields["head_dim"] == attention_width
    assert fields["tie_word_embeddings"] == SHAPES[shape]["tie_word_embeddings"]


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    """The dry run's study root, prepared once: stand-ins, rewritten parameters."""
    root = tmp_path_factory.mktemp("paper-dry-run")
    return root, dry_run.prepare(root, source=REPO)


@pytest.mark.slow
def test_stand_ins_are_saved_in_the_paper_dtype_and_load_as_their_family(dry):
    from safetensors import safe_open

    from layerif import load_model

    root, _ = dry
    for model_id, cls in [("mistralai/Mistral-7B-v0.1", "MistralForCausalLM"),
                          ("meta-llama/Llama-2-7b-hf", "LlamaForCausalLM"),
                          ("google/gemma-7b", "GemmaForCausalLM")]:
        folder = root / "models" / model_id.split("/")[-1]
        with safe_open(str(folder / "model.safetensors"), "pt") as f:
            dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert dtypes == {"BF16"}, (model_id, dtypes)
        model, tok = load_model(str(folder), dtype="bfloat16", device_map="cpu")
        assert type(model).__name__ == cls
        assert {p.device.type for p in model.parameters()} == {"cpu"}   # a one-device map
        assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
        assert len(tok) == model.config.vocab_size == dry_run.VOCAB and tok.pad_token is not None


@pytest.mark.slow
def test_the_stand_ins_tokenizer_is_smollm2s_first_tokens(dry, smollm2):
    """The cut vocabulary tokenizes as SmolLM2's wherever SmolLM2's tokens fall inside it
    (BPE applies its lower-ranked merges first), and every text round-trips."""
    from transformers import AutoTokenizer

    root, _ = dry
    _, full = smollm2
    cut = AutoTokenizer.from_pretrained(root / "models" / "gemma-7b")
    assert cut.chat_template == full.chat_template and cut.pad_token == full.pad_token
    texts = [" the in on at", "<|im_start|>1234<|im_end|>", "the answer",
             "<|im_start|>user\nIs it?<|im_end|>", "Photosynthesis converts light energy.", "ünïcödé ✓"]
    inside = []
    for text in texts:
        ids, reference = cut(text)["input_ids"], full(text)["input_ids"]
        assert max(ids) < dry_run.VOCAB and cut.decode(ids) == text, text
        assert (ids == reference) == (max(reference) < dry_run.VOCAB), (text, ids, reference)
        inside += [text] if ids == reference else []
    assert inside == texts[:2], inside   # both cases were met
    with pytest.raises(ValueError, match="^size=100 is invalid"):
        dry_run.cut_vocabulary(full, root / "too-small", 100)


# -- the notebooks -------------------------------------------------------------------------
def _json(value) -> dict:
    return json.loads(json.dumps(value, default=str))


def _paper_path(manifest: dict, stand_ins: set) -> set[str]:
    """Check a result the dry run saved: computed on a stand-in by the paper presets apart
    from the dry run's sizes (:data:`layerif.dry_run.DRY_SIZES`, ``EXTRA``). Returns which
    presets it was checked against."""
    from layerif.evaluate.suite import EvalConfig
    from layerif.moe import MoEConfig
    from layerif.prune import PruneConfig
    from layerif.scores import ScoreConfig
    from layerif.train import TrainConfig

    assert manifest["model_id"] in stand_ins | {None}, manifest["model_id"]
    config, sizes, checked = manifest["config"], dry_run.DRY_SIZES, set()
    if manifest["kind"] == "layer_scores" and config["modules"] == "attention":
        # notebook 05's task-specific scores take the preset's length (no parameter sets it)
        assert config["max_length"] in (sizes["max_length"], ScoreConfig.paper().max_length)
        paper = ScoreConfig.paper().replace(n_train=sizes["n_train"], n_val=sizes["n_val"],
                                            max_length=config["max_length"], method=config["method"])
        assert config == _json(paper.identity())
        checked.add("ScoreConfig.paper")
    if isinstance(config, dict) and config.get("moe"):
        seed, train = config["moe"]["seed"], dry_run.EXTRA["03_lora_moe"]["train"]
        moe = MoEConfig.paper().replace(seed=seed)
        if config["method"] == "LoRA (same parameters)":   # the rank-matched single expert
            moe = moe.replace(rank=config["moe"]["rank"], top_k=1)
        assert config["moe"] == _json(moe.identity())
        assert config["train"] == _json(TrainConfig.paper().replace(seed=seed, **train).identity())
        checked.add("MoEConfig.paper, TrainConfig.paper")
    if manifest["kind"] == "pruned_eval":
        evaluation = EvalConfig.paper().replace(n_examples=sizes["n_examples"], ppl_samples=sizes["ppl_samples"],
                                                ppl_len=sizes["ppl_len"], tasks=config["evaluation"]["tasks"])
        assert set(evaluation.tasks) <= set(EvalConfig.paper().tasks)
        assert config["evaluation"] == _json(evaluation.identity())
        checked.add("EvalConfig.paper")
        if config["prune"] is not None:
            prune = PruneConfig.paper().replace(method=config["prune"]["method"], n_samples=sizes["n_samples"],
                                                seq_len=sizes["seq_len"])
            assert config["prune"] == _json(prune.identity())
            checked.add("PruneConfig.paper")
    return checked


@pytest.fixture
def loads(monkeypatch):
    """``[(name, {dtypes of its parameters})]`` of every model the study wing loads
    (``load_model`` of every ``layerif`` module that imported it, wrapped)."""
    import layerif.experiments
    from layerif.models import load_model

    for info in pkgutil.iter_modules(layerif.experiments.__path__):
        importlib.import_module(f"layerif.experiments.{info.name}")
    calls = []

    def recording(*args, **kwargs):
        model, tokenizer = load_model(*args, **kwargs)
        name = args[0] if args else kwargs.get("name", "smollm2-135m")
        calls.append((str(name), {p.dtype for p in model.parameters()}))
        return model, tokenizer

    for module in list(sys.modules.values()):
        if (getattr(module, "__name__", "").startswith("layerif.")
                and getattr(module, "load_model", None) is load_model):
            monkeypatch.setattr(module, "load_model", recording)
    return calls


#: The presets each notebook's own results must have been checked against.
PRESETS = {"01_layer_scores": {"ScoreConfig.paper"}, "03_lora_moe": {"MoEConfig.paper, TrainConfig.paper"},
           "05_pruning": {"EvalConfig.paper", "PruneConfig.paper"},
           "07_ablation_smoothing": {"EvalConfig.paper", "PruneConfig.paper"},
           "08_ablation_granularity": {"EvalConfig.paper", "PruneConfig.paper"}}


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_at_the_paper_profile(dry, name, capsys, loads):
    from layerif.fingerprint import model_key

    root, prepared = dry
    params, subs = prepared[name]
    before = set((root / "results").rglob("manifest.json"))
    checkout = sorted((REPO / "results" / "paper").rglob("*"))
    namespace = dry_run.execute(name, root, params, subs)
    assert namespace["profile"] == "paper"
    printed = capsys.readouterr().out
    assert all(s.line() in printed for s in subs)
    stand_ins = {model_key(str(p)) for p in (root / "models").iterdir() if p.is_dir()}
    checked = set()
    for path in set((root / "results").rglob("manifest.json")) - before:
        checked |= _paper_path(json.loads(path.read_text()), stand_ins)
    assert PRESETS.get(name, set()) <= checked, checked
    # the paper's 7B models load in bfloat16 (params/paper model_dtype), so do their stand-ins;
    # notebook 10 loads through the other notebooks' parameters, notebook 06 loads none
    folders = {str(p) for p in (root / "models").iterdir() if p.is_dir()}
    assert all(model in folders for model, _ in loads), loads
    assert all(dtypes == {torch.bfloat16} for _, dtypes in loads), loads
    if "model_dtype" in params:
        assert params["model_dtype"] == "bfloat16" and loads, (name, loads)
    assert sorted((REPO / "results" / "paper").rglob("*")) == checkout   # nothing written there


@pytest.mark.slow
def test_the_readme_pipeline_in_bfloat16_with_a_device_map_matches_float64(dry):
    """The README's pipeline as a 7B user runs it (bfloat16 weights spread by a
    ``device_map``; the paper presets): block scores within 5% of the same checkpoint's
    float64 scores, and Wanda's sparsity per matrix the allocated one, weights left bfloat16."""
    import numpy as np

    from layerif import allocate, data, describe, layer_scores, linear_modules, load_model
    from layerif import transformer_blocks
    from layerif.prune import PruneConfig, prune_model
    from layerif.scores import ScoreConfig

    root, _ = dry
    folder = str(root / "models" / "Mistral-7B-v0.1")
    model, tok = load_model(folder, dtype="bfloat16", device_map="cpu")
    reference, _ = load_model(folder, dtype="float64", device="cpu")
    train, val = data.load_task("boolq", "train", n=8), data.load_task("boolq", "validation", n=7)
    config = ScoreConfig.paper().replace(n_train=8, n_val=7, max_length=32)
    got = layer_scores(model, tok, train, val, config, progress=False).aggregate("positive")
    want = layer_scores(reference, tok, train, val, config.replace(dtype=torch.float64),
                        progress=False).aggregate("positive")
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=0.05)
    ratios = allocate.sparsity(got, target=0.5, n_params=describe(model)["linear_params"])
    pruner = PruneConfig.paper().replace(n_samples=2, seq_len=32)
    prune_model(model, pruner, ratios, pruner.calibration(tok), progress=False)
    for i, (_, block) in enumerate(transformer_blocks(model)):
        for name, module in linear_modules(block):
            weight = module.weight
            assert weight.dtype == torch.bfloat16, name
            zeros = float((weight == 0).sum()) / weight.numel()
            assert abs(zeros - ratios[i]) <= 1 / weight.shape[1], (i, name, zeros, ratios[i])
