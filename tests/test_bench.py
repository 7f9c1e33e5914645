"""The paper-scale benchmark (``python -m layerif.bench paper-scale``) and its shapes.

No timing thresholds: the tests check the shapes against the published parameter counts,
and that the benchmark times every stage at a tiny scale with finite, positive ratios.
"""
import math

import pytest
import torch

from layerif.bench import paper_scale, shapes

# Parameter counts published with each checkpoint (its model card / safetensors index).
PUBLISHED = {"mistral-7b": 7_241_732_096, "llama2-7b": 6_738_415_616,
             "gemma-7b": 8_537_680_896, "smollm2-135m": 134_515_008}


@pytest.mark.parametrize("shape", sorted(PUBLISHED))
def test_shapes_have_the_published_parameter_counts(shape):
    model = shapes.build(shapes.scaled(shape), torch.device("meta"), torch.bfloat16, name=shape)
    assert sum(p.numel() for p in model.parameters()) == PUBLISHED[shape]


def test_scaled_shape_keeps_head_size_and_kv_grouping():
    fields = shapes.scaled("mistral-7b", layers=3, hidden=512)
    assert fields["num_hidden_layers"] == 3 and fields["hidden_size"] == 512
    assert fields["head_dim"] == 128 and fields["num_attention_heads"] == 4
    assert fields["num_key_value_heads"] == 1  # 32 heads over 8 kv heads: groups of 4
    assert fields["intermediate_size"] == 14336 * 512 // 4096
    assert shapes.SHAPES["mistral-7b"]["hidden_size"] == 4096  # the preset is not changed
    with pytest.raises(ValueError, match="shape='gpt-5'"):
        shapes.scaled("gpt-5")
    with pytest.raises(ValueError, match="hidden=60"):
        shapes.scaled("llama2-7b", hidden=60)


def test_measure_alternates_baseline_and_stage():
    calls = []
    base, stage, peak = paper_scale.measure(
        torch.device("cpu"), lambda: calls.append("b"),
        lambda: calls.append("s") or paper_scale.OwnSeconds(2.5), rounds=3)
    assert calls == ["b", "s"] * 3
    assert stage == 2.5 and 0 < base < 1 and math.isfinite(peak)


def test_paper_scale_times_every_stage_at_a_tiny_shape():
    tok = paper_scale.embedded_tokenizer()
    fields = shapes.scaled("mistral-7b", layers=2, hidden=64)
    model = shapes.build(fields, torch.device("cpu"), torch.float32,
                         vocab_size=max(fields["vocab_size"], len(tok)), name="mistral-7b")
    table = paper_scale.run(model, tok, paper_scale.TINY, rounds=1)
    assert list(table.columns) == paper_scale.COLUMNS
    assert list(table["stage"]) == list(paper_scale.STAGES)
    for column in ("seconds", "baseline_s", "ratio"):
        values = table[column].to_numpy(dtype=float)
        assert all(math.isfinite(v) and v > 0 for v in values), (column, values)
    ratios = table["seconds"] / table["baseline_s"]
    assert (abs(ratios - table["ratio"]) < 1e-12).all()
    assert table["peak_mem_GB"].map(math.isfinite).all()
    # the adapters were taken off again, and pruning ran last (half of each matrix zeroed)
    assert not any("lora" in n or "expert" in n or "router" in n for n, _ in model.named_parameters())
    assert not hasattr(model, "peft_config") and getattr(model, "_layerif_moe", None) is None
    q = model.get_submodule("model.layers.0.self_attn.q_proj").weight
    assert float((q == 0).float().mean()) == pytest.approx(0.5, abs=0.02)


def test_paper_scale_command_prints_the_table(capsys):
    from layerif.bench.__main__ import main

    assert main(["paper-scale", "--shape", "smollm2-135m", "--tiny", "--rounds", "1",
                 "--stages", "perplexity", "wanda"]) == 0
    out = capsys.readouterr().out
    assert "2 blocks, width 64" in out and "peak process RSS" in out
    assert "perplexity" in out and "wanda" in out and "sparsegpt" not in out


def test_influence_bench_times_every_phase_and_states_every_goal(save_tiny, capsys):
    """`python -m layerif.bench influence` at a tiny scale: the epoch, both score targets, the
    shared passes and the authors' loop each get a row with a positive time and the ratio to
    the epoch that its seconds give; every goal is printed as PASS or MISS."""
    from layerif.bench import influence

    argv = ["--model", str(save_tiny(2)), "--random-weights", "--device", "cpu", "--n-train", "4",
            "--n-val", "2", "--max-length", "16", "--batch-size", "2", "--loop-examples", "2"]
    assert influence.main(argv) == 0
    out = capsys.readouterr().out
    table = out.split("\nphase")[1].split("\n\n")[0].splitlines()[1:]
    labels = ["plain fwd+bwd epoch", "LayerIF, full attention weights", "datainf + hessian_free",
              "LayerIF, LoRA r=8", "authors' loop, est. 2 blocks"]
    assert [next(lab for lab in labels if row.startswith(lab)) for row in table] == labels
    ratios = [float(row.split()[-3]) for row in table]
    assert ratios[0] == 1.0 and all(math.isfinite(r) and r > 0 for r in ratios)
    assert [int(row.split()[-2]) for row in table] == [1, 2, 2, 2, 2]   # passes
    goals = [line for line in out.splitlines() if line.startswith(("PASS", "MISS"))]
    assert len(goals) == 5 and any("per-block loop" in g for g in goals)
    with pytest.raises(SystemExit):
        influence.main(argv + ["--shared-rounds", "0"])
