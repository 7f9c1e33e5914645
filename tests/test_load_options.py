"""A notebook's ``model_dtype`` parameter: :func:`layerif.notebook_params.load_options` turns it
into :func:`layerif.load_model`'s arguments, the paper profile sets bfloat16 where its
notebooks load a 7B model, and the cpu and smoke profiles keep float32 (load_model's own
default, so their loads and stored results are as before)."""
import inspect
from pathlib import Path

import pytest
import torch

from layerif import study
from layerif.models import load_model, resolve_dtype
from layerif.notebook_params import MODEL_DTYPES, load_options

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = study.list_notebooks(REPO)
#: The notebooks whose paper run loads a 7B model (06 and 10 read saved results only).
LOADING = {"00_model_and_data", "01_layer_scores", "02_expert_allocation", "03_lora_moe",
           "04_sparsity_allocation", "05_pruning", "07_ablation_smoothing",
           "08_ablation_granularity", "09_influence_validation"}


@pytest.mark.parametrize("params, dtype", [({}, torch.float32), ({"model_dtype": "float32"}, torch.float32),
                                           ({"model_dtype": "bfloat16"}, torch.bfloat16),
                                           ({"model_dtype": "float16", "n": 3}, torch.float16)])
def test_load_options_give_load_model_the_dtype(params, dtype):
    options = load_options(params)
    assert set(options) == {"dtype"}
    assert resolve_dtype(options["dtype"]) is dtype


def test_no_model_dtype_is_load_models_own_default():
    """Without the parameter the experiments load exactly as before it existed."""
    default = inspect.signature(load_model).parameters["dtype"].default
    assert resolve_dtype(load_options({})["dtype"]) is resolve_dtype(default) is torch.float32
    assert MODEL_DTYPES[0] == "float32"


@pytest.mark.parametrize("bad", ["float64", "bf16", "torch.bfloat16", "", 16, None, torch.bfloat16])
def test_a_bad_model_dtype_is_one_line_naming_it(bad):
    with pytest.raises(ValueError) as err:
        load_options({"model_dtype": bad})
    message = str(err.value)
    assert message.startswith(f"model_dtype={bad!r} is invalid: expected one of")
    assert "bfloat16" in message and "\n" not in message


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_paper_loads_in_bfloat16_and_the_book_profiles_in_float32(name):
    """Each notebook's profiles: bfloat16 in the paper profile where it loads a 7B model,
    float32 (no parameter) in cpu and smoke; a notebook whose files set it declares it in its
    parameters cell with the default float32, of the type ``--params`` is checked against."""
    paper = study.load_params(name, "paper", REPO)
    assert load_options(paper)["dtype"] == ("bfloat16" if name in LOADING else "float32")
    assert ("model_dtype" in paper) == (name in LOADING)
    for profile in ("cpu", "smoke"):
        assert "model_dtype" not in study.load_params(name, profile, REPO), (name, profile)
    if name in LOADING:
        assert study.parameter_defaults(name, REPO)["model_dtype"] == "float32"
        study.check_param_types(name, "paper", {"model_dtype": "float16"}, "--params x:", REPO)
        with pytest.raises(ValueError, match="model_dtype=16 is invalid"):
            study.check_param_types(name, "paper", {"model_dtype": 16}, "--params x:", REPO)


def test_pruning_runs_take_the_dtype_from_their_notebooks_params(tmp_path):
    from layerif.experiments import pruning

    params = {"prune": {"n_samples": 2, "seq_len": 16}, "evaluation": {"n_examples": 2}}
    assert pruning.from_params(tmp_path, "smollm2-135m", params).load_kwargs == {"dtype": "float32"}
    run = pruning.from_params(tmp_path, "smollm2-135m", {**params, "model_dtype": "bfloat16"})
    assert run.load_kwargs == {"dtype": "bfloat16"}


@pytest.mark.parametrize("device_map", ["auto", {"": "cpu"}])
def test_a_device_map_reaches_load_model_and_loads_the_same_model(device_map):
    """``device_map`` is passed through (None: not at all); on this CPU the mapped load gives
    the same weights and the same logits as the plain one."""
    options = load_options({"model_dtype": "float32", "device_map": device_map})
    assert options == {"dtype": "float32", "device_map": device_map}
    assert load_options({"device_map": None}) == {"dtype": "float32"}
    plain, tok = load_model("smollm2-135m", device="cpu", **load_options({}))
    mapped, _ = load_model("smollm2-135m", **options)
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(plain(ids).logits, mapped(ids).logits)


@pytest.mark.parametrize("bad", ["", 0, ["cpu"]])
def test_a_bad_device_map_is_one_line_naming_it(bad):
    with pytest.raises(ValueError) as err:
        load_options({"device_map": bad})
    assert str(err.value).startswith(f"device_map={bad!r} is invalid: expected None")


@pytest.mark.parametrize("name", sorted(LOADING))
def test_paper_spreads_its_models_with_a_device_map_and_the_book_profiles_do_not(name):
    """The paper profile loads its 7B models with ``device_map="auto"``; cpu and smoke leave
    the parameter to its cell default None (one device), so their loads are as before."""
    assert load_options(study.load_params(name, "paper", REPO))["device_map"] == "auto"
    assert study.parameter_defaults(name, REPO)["device_map"] is None
    for profile in ("cpu", "smoke"):
        assert "device_map" not in load_options(study.load_params(name, profile, REPO))
