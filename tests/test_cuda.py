"""Device test of the package: every capability gives the CPU's float64 numbers on each device.

Every test is parametrized over the available devices: ``cpu`` always (so the bodies run in
CI), ``cuda`` where a GPU is present (the CUDA leg skips elsewhere). Run the GPU leg with
``pytest tests/test_cuda.py``. The models are float64 so that CPU and CUDA agree to
rounding and no near-tie can flip a pruning mask.
"""
import pandas as pd
import pytest
import torch

from layerif.testing import tiny_model

DEVICES = [pytest.param("cpu"),
           pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                         reason="needs a CUDA device"))]

TEXTS = [
    "The cat sat on the mat. Answer: yes",
    "Paris is the capital of France.",
    "Two plus two equals four, so the answer is B.",
    "A short one.",
    "Influence functions estimate the effect of a training point.",
    "Blocks differ in how well they are trained.",
]


def _pair(device, seed=0):
    """The tiny float64 model twice: a CPU reference and a copy on ``device``."""
    cpu, tok = tiny_model(seed=seed, dtype=torch.float64)
    gpu, _ = tiny_model(seed=seed, dtype=torch.float64)
    return cpu, gpu.to(device), tok


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("target", ["weights", "lora"])
def test_layer_scores_match_cpu(target, device):
    from layerif.scores import ScoreConfig, layer_scores

    cpu, gpu, tok = _pair(device)
    base = ScoreConfig.smoke().replace(target=target, n_train=4, n_val=2, batch_size=2,
                                       dtype=torch.float64)
    on_cpu = layer_scores(cpu, tok, TEXTS[:4], TEXTS[4:], base.replace(device="cpu"),
                          progress=False)
    on_gpu = layer_scores(gpu, tok, TEXTS[:4], TEXTS[4:], base.replace(device=device),
                          progress=False)
    # transformers computes rotary embeddings in float32 even for a float64 model, so the
    # model's own gradients differ between devices by ~1e-7 (weights) to ~1e-5 (LoRA).
    torch.testing.assert_close(on_gpu.values, on_cpu.values, rtol=1e-4, atol=1e-10)
    pd.testing.assert_series_equal(on_gpu.aggregate("all"), on_cpu.aggregate("all"), rtol=1e-4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_pruning_matches_cpu(method, device):
    from layerif.prune import prune_model

    cpu, gpu, _ = _pair(device)
    calib = torch.randint(4, 100, (4, 24), generator=torch.Generator().manual_seed(0))
    ratios = pd.Series([0.3, 0.5, 0.4, 0.6], index=pd.RangeIndex(4, name="layer"))
    rep_cpu = prune_model(cpu, method, ratios, calib, progress=False)
    rep_gpu = prune_model(gpu, method, ratios, calib.to(device), progress=False)
    pd.testing.assert_frame_equal(rep_gpu, rep_cpu)
    for (name, p_cpu), (_, p_gpu) in zip(cpu.named_parameters(), gpu.named_parameters()):
        torch.testing.assert_close(p_gpu.cpu(), p_cpu, rtol=1e-5, atol=1e-8, msg=name)


@pytest.mark.parametrize("device", DEVICES)
def test_moe_forward_and_training_on_device(device):
    from layerif.moe import attach
    from layerif.train import finetune

    cpu, gpu, tok = _pair(device)
    experts = pd.Series([1, 2, 3, 4], index=pd.RangeIndex(4, name="layer"))
    attach(cpu, experts, dropout=0.0)
    with torch.no_grad():  # LoRA B starts at zero: give the experts a visible effect
        gen = torch.Generator().manual_seed(2)
        for p in cpu.parameters():
            if p.requires_grad and not p.any():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05)
    attach(gpu, experts, dropout=0.0)
    gpu.load_state_dict(cpu.state_dict())
    batch = tok(TEXTS[:3], return_tensors="pt", padding=True)
    with torch.no_grad():
        out_cpu = cpu(**batch).logits
        out_gpu = gpu(**{k: v.to(device) for k, v in batch.items()}).logits
    torch.testing.assert_close(out_gpu.cpu(), out_cpu, rtol=1e-5, atol=1e-6)
    history = finetune(gpu, tok, TEXTS * 4, epochs=3, lr=3e-3, batch_size=4, max_length=64,
                       seed=0, progress=False)
    losses = pd.DataFrame(history)["loss"].to_numpy()
    assert losses[-3:].mean() < losses[:3].mean()


@pytest.mark.parametrize("device", DEVICES)
def test_accuracy_and_perplexity_match_cpu(device):
    from layerif.data import Example
    from layerif.evaluate import accuracy, choice_logliks, perplexity

    cpu, gpu, tok = _pair(device)
    examples = [Example(id=f"t/{i}", prompt=f"Is {i} even? Answer:", choices=[" no", " yes"],
                        label=int(i % 2 == 0), text=f"Is {i} even? Answer:" + [" no", " yes"][i % 2 == 0])
                for i in range(6)]
    r_cpu = accuracy(cpu, tok, examples, batch_size=4)
    r_gpu = accuracy(gpu, tok, examples, batch_size=4)
    assert r_gpu.accuracy == r_cpu.accuracy
    ll_cpu = choice_logliks(cpu, tok, examples, batch_size=4, progress=False)
    ll_gpu = choice_logliks(gpu, tok, examples, batch_size=4, progress=False)
    pd.testing.assert_frame_equal(ll_gpu, ll_cpu, rtol=1e-6)
    tokens = torch.randint(4, 100, (3, 32), generator=torch.Generator().manual_seed(0))
    assert perplexity(gpu, tokens.to(device), batch_size=2, progress=False) == pytest.approx(
        perplexity(cpu, tokens, batch_size=2, progress=False), rel=1e-6)
