import os

import pytest
import torch

# Tests never touch the network: hub lookups fail fast instead of hanging.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture
def tiny():
    """(model, tokenizer): a 4-block random Llama with a character tokenizer (float32)."""
    from layerif.testing import tiny_model

    return tiny_model()


@pytest.fixture
def tiny64():
    """The same tiny Llama in float64, for brute-force references."""
    from layerif.testing import tiny_model

    return tiny_model(dtype=torch.float64)


@pytest.fixture(scope="session")
def smollm2():
    """The real embedded SmolLM2-135M on CPU (slow tests only), loaded once per session and
    shared: a test that changes it works on a ``copy.deepcopy``."""
    from layerif.testing import shared_model

    return shared_model("smollm2-135m", device="cpu")


@pytest.fixture(scope="session")
def smollm2_64(smollm2):
    """A float64 copy of :func:`smollm2` (``model.double()``), made once per session and shared
    by the tests that only read it (float64 references)."""
    import copy

    model, tokenizer = smollm2
    return copy.deepcopy(model).to(torch.float64), tokenizer


@pytest.fixture
def load_once(monkeypatch):
    """Every ``load_model`` of ``layerif.experiments`` served by ``layerif.testing.shared_model``
    for embedded models (each model loaded once per session instead of once per notebook run);
    for tests whose code only reads the models, as the read-only claims table does."""
    import importlib
    import pkgutil

    import layerif.experiments
    from layerif.models import EMBEDDED_MODELS, load_model
    from layerif.testing import shared_model

    def load(name="smollm2-135m", device="auto", dtype=torch.float32, device_map=None, **kwargs):
        if name not in EMBEDDED_MODELS or device_map is not None or kwargs:
            return load_model(name, device=device, dtype=dtype, device_map=device_map, **kwargs)
        return shared_model(name, device=device, dtype=dtype)

    for info in pkgutil.iter_modules(layerif.experiments.__path__):
        module = importlib.import_module(f"layerif.experiments.{info.name}")
        if getattr(module, "load_model", None) is load_model:
            monkeypatch.setattr(module, "load_model", load)


@pytest.fixture
def one_thread():
    """Tiny tensors: a second thread's synchronisation costs more than it saves."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def save_tiny(tmp_path_factory):
    """``save_tiny(n_layers) -> path``: the tiny Llama and its tokenizer saved as a local
    checkpoint (for code that loads a model by name, as the study and the CLI do)."""
    from layerif.testing import tiny_model

    def save(n_layers: int = 4):
        path = tmp_path_factory.mktemp("tiny") / f"tiny-llama-{n_layers}"
        model, tok = tiny_model(n_layers=n_layers)
        model.save_pretrained(path)
        tok.save_pretrained(path)
        return path

    return save
