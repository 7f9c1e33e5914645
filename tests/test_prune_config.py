"""PruneConfig: validation, presets, identity; prune_model takes one (and no keyword settings); prune()."""
import dataclasses

import pandas as pd
import pytest
import torch

import layerif
from layerif.data import calibration_tokens
from layerif.models import linear_modules, transformer_blocks
from layerif.prune import PruneConfig, magnitude, prune, prune_model, sparsegpt, walk_blocks, wanda
from layerif.testing import tiny_model


def _calibration(n=4, seq=24, seed=0):
    return torch.randint(4, 104, (n, seq), generator=torch.Generator().manual_seed(seed))


def _masks(model):
    return {f"{p}.{n}": (m.weight == 0).clone()
            for p, b in transformer_blocks(model) for n, m in linear_modules(b)}


# ----------------------------------------------------------------------------- the dataclass
@pytest.mark.parametrize("name, bad", [
    ("method", "random"), ("method", None),
    ("nm", (2,)), ("nm", (4, 2)), ("nm", (2, 2)), ("nm", (2.0, 4)), ("nm", "2:4"),
    ("n_samples", 0), ("n_samples", 1.5), ("n_samples", True),
    ("seq_len", 0), ("seq_len", "256"),
    ("calibration_seed", 1.0), ("calibration_seed", True),
    ("calibration_source", "wikitext2"),
    ("blocksize", 0), ("blocksize", 64.0),
    ("percdamp", -0.01), ("percdamp", float("nan")), ("percdamp", float("inf")), ("percdamp", "0.01"),
    ("ties", "loose"), ("ties", None),
    ("batch_size", 0), ("batch_size", None),
])
def test_each_field_is_validated_with_a_one_line_error(name, bad):
    with pytest.raises(ValueError, match=rf"^{name}=.* is invalid: expected") as err:
        PruneConfig(**{name: bad})
    assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match=rf"^{name}="):
        PruneConfig.smoke().replace(**{name: bad})  # replace validates too


def test_nm_blocksize_must_fit_for_sparsegpt():
    with pytest.raises(ValueError, match="blocksize=130 is invalid"):
        PruneConfig(method="sparsegpt", nm=(2, 4), blocksize=130)
    PruneConfig(method="wanda", nm=(2, 4), blocksize=130)  # blocksize is SparseGPT's only


def test_presets_are_valid_and_the_paper_preset_is_the_published_setting():
    assert PruneConfig.PRESETS == ("smoke", "paper")  # the book's sizes live in params/*.yaml
    for name in PruneConfig.PRESETS:
        config = PruneConfig.preset(name)
        assert config == getattr(PruneConfig, name)() and config.method == "wanda"
        assert PruneConfig.preset(name, method="sparsegpt").method == "sparsegpt"
    sizes = {name: (PruneConfig.preset(name).n_samples, PruneConfig.preset(name).seq_len)
             for name in PruneConfig.PRESETS}
    assert sizes == {"smoke": (4, 64), "paper": (128, 2048)}
    paper = PruneConfig.paper()
    assert paper == PruneConfig()  # the defaults are the published setting
    assert (paper.nm, paper.blocksize, paper.percdamp, paper.ties, paper.calibration_seed) == \
        (None, 128, 0.01, "exact", 0)
    for name in ("gpu", "cpu"):
        with pytest.raises(ValueError, match=f"preset='{name}' is unknown"):
            PruneConfig.preset(name)


def test_identity_help_and_round_trip():
    config = PruneConfig(method="sparsegpt", nm=[2, 4], batch_size=3)
    assert config.nm == (2, 4)
    assert PruneConfig.runtime_fields() == ("batch_size",)
    assert "batch_size" not in config.identity()
    assert config.identity() == config.replace(batch_size=16).identity()
    assert config.identity() != config.replace(ties="reference").identity()
    assert PruneConfig.from_dict(config.to_dict()) == config
    text = PruneConfig.help()
    assert all(f.name in text for f in dataclasses.fields(PruneConfig))
    assert layerif.PruneConfig is PruneConfig


# ----------------------------------------------------------------------------- prune_model
@pytest.mark.parametrize("method, ties", [("magnitude", "exact"), ("magnitude", "reference"),
                                          ("wanda", "exact"), ("sparsegpt", "exact"),
                                          ("sparsegpt", "reference")])
def test_the_configs_settings_reach_the_per_matrix_pruners(method, ties):
    # The first block's weights equal the per-matrix pruner called with the config's settings
    # (blocksize, percdamp, ties: none of them the defaults) on that block's dense statistics.
    cal = _calibration()
    model, _ = tiny_model()
    reference, _ = tiny_model()
    config = PruneConfig(method=method, n_samples=4, seq_len=24, batch_size=2, blocksize=16,
                         percdamp=0.02, ties=ties)
    prune_model(model, config, 0.5, cal, progress=False)
    kind = {"magnitude": None, "wanda": "act_sq_norm", "sparsegpt": "hessian"}[method]
    stats = next(walk_blocks(reference, cal, kind, 2, False))[3] if kind else {}
    path, block = transformer_blocks(reference)[0]
    for name, module in linear_modules(block):
        W = module.weight.detach()
        want = {"magnitude": lambda: magnitude(W, 0.5, ties=ties),
                "wanda": lambda: wanda(W, stats[name], 0.5),
                "sparsegpt": lambda: sparsegpt(W, stats[name], 0.5, blocksize=16, percdamp=0.02,
                                               ties=ties)}[method]()
        got = model.get_submodule(f"{path}.{name}").weight
        assert torch.equal(got == 0, want == 0), name
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_keyword_settings_a_method_name_or_another_calibration_are_refused():
    model, _ = tiny_model()
    cal = _calibration()
    config = PruneConfig(method="wanda", n_samples=4, seq_len=24)
    # the keyword form of before: one line naming the setting and where it goes now
    with pytest.raises(TypeError, match=r"^prune_model\(nm=\.\.\.\) is invalid: .*"
                       r"config\.replace\(nm=\.\.\.\)") as err:
        prune_model(model, config, 0.5, cal, nm=(2, 4), progress=False)
    assert "\n" not in str(err.value)
    with pytest.raises(TypeError, match=r"prune_model\(batch_size=\.\.\.\)"):
        prune_model(model, config, 0.5, cal, batch_size=8, progress=False)  # even the same value
    with pytest.raises(TypeError, match=r"prune_model\(ties=\.\.\.\)"):
        prune_model(model, "magnitude", 0.5, ties="loose", progress=False)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'progres'"):
        prune_model(model, config, 0.5, cal, progres=False)  # not a setting: no config hint
    with pytest.raises(ValueError, match=r"calibration of shape \(4, 12\) is invalid with the "
                       r"config's n_samples=4, seq_len=24"):
        prune_model(model, config, 0.5, cal[:, :12], progress=False)
    with pytest.raises(ValueError, match=r"^config=3 is invalid: expected a PruneConfig$"):
        prune_model(model, 3, 0.5, cal, progress=False)
    with pytest.raises(ValueError, match=r"config='wanda' is invalid: expected a PruneConfig "
                       r"\(e\.g\. PruneConfig\(method='wanda'\)\)"):
        prune_model(model, "wanda", 0.5, cal, progress=False)
    assert all(not m.any() for m in _masks(model).values())  # nothing was pruned
    report = prune_model(model, config, 0.5, cal, progress=False)
    assert report.attrs["global_sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_prune_draws_the_configs_calibration():
    model, tok = tiny_model()
    reference, _ = tiny_model()
    config = PruneConfig(method="sparsegpt", n_samples=3, seq_len=32, calibration_seed=5,
                         batch_size=2)
    report = prune(model, tok, 0.5, config, progress=False)
    cal = calibration_tokens(tok, 3, 32, seed=5)
    want = prune_model(reference, config, 0.5, cal, progress=False)
    pd.testing.assert_frame_equal(report, want)
    ma, mb = _masks(model), _masks(reference)
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    # magnitude reads no activations: no tokenizer needed
    dense, _ = tiny_model()
    rep = prune(dense, None, 0.25, PruneConfig(method="magnitude"), progress=False)
    assert rep.attrs["global_sparsity"] == pytest.approx(0.25, abs=1e-3)
    with pytest.raises(ValueError, match="config='wanda' is invalid"):
        prune(dense, tok, 0.5, "wanda")
