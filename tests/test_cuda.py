"""Device test of the package: every capability gives the CPU's float64 numbers on each device.

Every test is parametrized over the available devices: ``cpu`` always (so the bodies run in
CI), ``cuda`` where a GPU is present (the CUDA leg skips elsewhere). Run the GPU leg with
``pytest tests/test_cuda.py``. The models are float64 so that CPU and CUDA agree to
rounding and no near-tie can flip a pruning mask.

``LAYERIF_CUDA_DTYPE=float32`` or ``bfloat16`` (``scripts/gpu_smoke.sh`` runs both) puts the
model copy on CUDA in that dtype instead; the CPU reference stays float64 and the
comparisons of the CUDA leg widen to ``TOLERANCE[dtype]``. bfloat16 keeps ~3 significant
digits, too few for element-wise checks: there tensors are compared by their relative error
in norm (``BF16_NORM_ERROR``), pruning masks by agreement (rounding makes ties), and accuracy
may differ by one example.
"""
import os

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


CUDA_DTYPE = os.environ.get("LAYERIF_CUDA_DTYPE", "float64")
TOLERANCE = {"float64": (0.0, 0.0), "float32": (1e-3, 1e-5), "bfloat16": (5e-2, 2e-2)}  # rtol, atol
BF16_NORM_ERROR = 0.1  # |gpu - cpu| / |cpu| (Frobenius) allowed in bfloat16
if CUDA_DTYPE not in TOLERANCE:
    raise ValueError(f"LAYERIF_CUDA_DTYPE={CUDA_DTYPE!r} is invalid: expected one of "
                     f"{list(TOLERANCE)}")


def _dtype(device) -> torch.dtype:
    return torch.float64 if device == "cpu" else getattr(torch, CUDA_DTYPE)


def _tol(device, rtol, atol) -> dict:
    """The test's own tolerances, widened to the CUDA dtype's on the CUDA leg."""
    floor = TOLERANCE["float64" if device == "cpu" else CUDA_DTYPE]
    return {"rtol": max(rtol, floor[0]), "atol": max(atol, floor[1])}


def _close(device, actual, expected, rtol, atol, msg=None):
    """assert_close with :func:`_tol`, or in bfloat16 a relative error in norm."""
    actual, expected = (x.detach().cpu().to(torch.float64) if isinstance(x, torch.Tensor)
                        else torch.tensor(x, dtype=torch.float64) for x in (actual, expected))
    if _dtype(device) == torch.bfloat16:
        error = ((actual - expected).norm() / expected.norm().clamp_min(1e-30)).item()
        assert error <= BF16_NORM_ERROR, f"{msg or 'tensor'}: relative error {error:.3g} in norm"
    else:
        torch.testing.assert_close(actual, expected, msg=msg, **_tol(device, rtol, atol))


def _pair(device, seed=0):
    """The tiny model twice: a float64 CPU reference and a copy on ``device`` (float64, or
    ``LAYERIF_CUDA_DTYPE`` on CUDA)."""
    cpu, tok = tiny_model(seed=seed, dtype=torch.float64)
    gpu, _ = tiny_model(seed=seed, dtype=_dtype(device))
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
    _close(device, on_gpu.values, on_cpu.values, 1e-4, 1e-10, "scores")
    agg_gpu, agg_cpu = on_gpu.aggregate("all"), on_cpu.aggregate("all")
    assert list(agg_gpu.index) == list(agg_cpu.index)
    _close(device, agg_gpu.to_numpy(), agg_cpu.to_numpy(), 1e-4, 1e-8, "aggregate('all')")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_pruning_matches_cpu(method, device):
    from layerif.prune import PruneConfig, prune_model

    cpu, gpu, _ = _pair(device)
    calib = torch.randint(4, 100, (4, 24), generator=torch.Generator().manual_seed(0))
    ratios = pd.Series([0.3, 0.5, 0.4, 0.6], index=pd.RangeIndex(4, name="layer"))
    config = PruneConfig(method=method, n_samples=4, seq_len=24)
    rep_cpu = prune_model(cpu, config, ratios, calib, progress=False)
    rep_gpu = prune_model(gpu, config, ratios, calib.to(device), progress=False)
    pd.testing.assert_frame_equal(rep_gpu, rep_cpu)
    for (name, p_cpu), (_, p_gpu) in zip(cpu.named_parameters(), gpu.named_parameters()):
        if _dtype(device) == torch.bfloat16:  # rounding makes ties: masks agree, mostly
            agree = ((p_gpu.cpu() != 0) == (p_cpu != 0)).double().mean().item()
            assert agree >= 0.95, f"{name}: pruning masks agree on {agree:.1%} only"
        else:
            _close(device, p_gpu, p_cpu, 1e-5, 1e-8, name)


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
    _close(device, out_gpu, out_cpu, 1e-5, 1e-6, "logits")
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
    if _dtype(device) == torch.bfloat16:  # a near-tie may flip one example
        assert abs(r_gpu.accuracy - r_cpu.accuracy) <= 1 / len(examples) + 1e-12
    else:
        assert r_gpu.accuracy == r_cpu.accuracy
    ll_cpu = choice_logliks(cpu, tok, examples, batch_size=4, progress=False)
    ll_gpu = choice_logliks(gpu, tok, examples, batch_size=4, progress=False)
    if _dtype(device) == torch.float64:
        pd.testing.assert_frame_equal(ll_gpu, ll_cpu, rtol=1e-6)
    else:  # the log-likelihoods, within the dtype's tolerance
        numbers = ll_cpu.select_dtypes("number").columns
        assert list(ll_gpu.index) == list(ll_cpu.index)
        _close(device, ll_gpu[numbers].to_numpy(float), ll_cpu[numbers].to_numpy(float), 1e-6,
               1e-8, "log-likelihoods")
    tokens = torch.randint(4, 100, (3, 32), generator=torch.Generator().manual_seed(0))
    assert perplexity(gpu, tokens.to(device), batch_size=2, progress=False) == pytest.approx(
        perplexity(cpu, tokens, batch_size=2, progress=False), rel=_tol(device, 1e-6, 0)["rtol"])
