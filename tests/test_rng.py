"""layerif.rng.seeded: seeded draws that leave the caller's generator where it was."""
import pytest
import torch

from layerif.rng import seeded


def test_seeded_draws_repeat_and_the_callers_stream_is_untouched():
    torch.manual_seed(123)
    expected = torch.rand(5)          # the caller's stream, undisturbed
    torch.manual_seed(123)
    with seeded(7):
        first = torch.rand(3)
    with seeded(7, "cpu"):
        again = torch.rand(3)
    after = torch.rand(5)
    assert torch.equal(first, again)
    assert torch.equal(after, expected)
    torch.manual_seed(7)
    assert torch.equal(first, torch.rand(3))   # the same draws as a plain seed gives


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_seeded_forks_a_cuda_devices_generator_too():
    torch.cuda.manual_seed(123)
    expected = torch.rand(5, device="cuda")
    torch.cuda.manual_seed(123)
    with seeded(7, "cuda"):
        first = torch.rand(3, device="cuda")
    with seeded(7, torch.device("cuda")):
        assert torch.equal(first, torch.rand(3, device="cuda"))
    assert torch.equal(torch.rand(5, device="cuda"), expected)
