"""Fine-tuning loop: schedule, token accounting, loss goes down, only adapters move."""
import pytest
import torch

from layerif import moe
from layerif.train import finetune

TEXTS = ["the cat sat on the mat.", "a dog ran in the park!", "cats and dogs are pets.",
         "the sun is hot.", "we like green tea."]


def _hf_loss(model, tok, texts):
    """Mean token loss with transformers' own ``labels`` loss (independent of layerif.train)."""
    total, n = 0.0, 0
    model.eval()
    with torch.no_grad():
        for t in texts:
            ids = torch.tensor([tok(t)["input_ids"] + [tok.eos_token_id]])
            out = model(input_ids=ids, labels=ids)
            total += float(out.loss) * (ids.shape[1] - 1)
            n += ids.shape[1] - 1
    return total / n


def test_schedule_and_token_accounting(tiny):
    model, tok = tiny
    moe.attach(model, [1, 2, 1, 2])
    hist = finetune(model, tok, TEXTS, epochs=2, lr=1e-3, batch_size=2, grad_accum=2,
                    warmup_steps=1, max_length=64, progress=False)
    # 5 texts -> 3 micro-batches -> 2 optimizer steps per epoch -> 4 steps in all
    assert hist.index.tolist() == [0, 1, 2, 3] and hist["epoch"].tolist() == [0, 0, 1, 1]
    # linear warm-up over 1 step, then linear decay to 0 after step 4
    assert hist["lr"].tolist() == pytest.approx([0.0, 1e-3, 1e-3 * 2 / 3, 1e-3 / 3])
    # char tokenizer: BOS + one token per character + EOS
    per_epoch = sum(len(t) + 2 for t in TEXTS)
    assert hist["tokens"].sum() == 2 * per_epoch
    assert hist["balance"].isna().all()  # balance_coef defaults to 0


def test_moe_training_lowers_the_loss_and_moves_only_adapters(tiny):
    model, tok = tiny
    frozen = {n: p.detach().clone() for n, p in model.named_parameters()}
    moe.attach(model, [1, 2, 3, 4], dropout=0.0)
    adapters = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    before = _hf_loss(model, tok, TEXTS)
    hist = finetune(model, tok, TEXTS, epochs=12, lr=1e-2, batch_size=5, max_length=64, progress=False)
    after = _hf_loss(model, tok, TEXTS)
    assert after < before - 0.25, (before, after)
    assert hist["loss"].iloc[-1] < hist["loss"].iloc[0]
    # the first step's recorded loss is the untrained model's loss on the same tokens
    assert hist["loss"].iloc[0] == pytest.approx(before, rel=1e-4)
    for n, p in model.named_parameters():
        if p.requires_grad:
            assert not torch.equal(p, adapters[n]), n
        else:
            assert torch.equal(p, frozen[n.replace(".base_layer", "")]), n
    assert not model.training  # back in eval mode, as it came in


def test_peft_lora_training_lowers_the_loss(tiny):
    from peft import LoraConfig, get_peft_model

    model, tok = tiny
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0,
                                             target_modules=["q_proj", "v_proj", "gate_proj", "down_proj"]))
    before = _hf_loss(model, tok, TEXTS)
    finetune(model, tok, TEXTS, epochs=12, lr=1e-2, batch_size=5, max_length=64, progress=False)
    assert _hf_loss(model, tok, TEXTS) < before - 0.2


def test_balance_loss_is_added_when_attached_with_a_coefficient(tiny):
    from layerif.testing import tiny_model

    torch.manual_seed(0)
    measured = {}
    for coef in (0.0, 5.0):
        model, tok = tiny_model()
        moe.attach(model, [4, 4, 4, 4], dropout=0.0, balance_coef=coef)
        hist = finetune(model, tok, TEXTS, epochs=6, lr=2e-2, batch_size=5, max_length=64, progress=False)
        assert hist["balance"].isna().all() == (coef == 0)
        assert all(l.track_balance == (coef > 0) for _, l in moe.moe_layers(model))
        for _, layer in moe.moe_layers(model):
            layer.track_balance = True  # measure both models the same way
        model.train()
        enc = tok(TEXTS, return_tensors="pt", padding=True)
        model(**enc)  # a training forward (grad enabled) records the routers' balance
        measured[coef] = float(moe.balance_loss(model).detach()) / 28  # mean over the 28 routers
    assert measured[5.0] < measured[0.0]
    assert measured[5.0] < 1.05  # close to the balanced value of 1


def test_token_tensor_input(tiny):
    model, tok = tiny
    moe.attach(model, [1, 1, 1, 1])
    ids = torch.randint(4, 100, (6, 10))
    hist = finetune(model, tok, ids, batch_size=4, progress=False)
    assert hist["tokens"].tolist() == [40, 20]


@pytest.mark.parametrize("kwargs,match", [
    ({"epochs": 0}, "epochs=0"), ({"lr": -1.0}, "lr=-1.0"), ({"batch_size": 0}, "batch_size=0"),
    ({"grad_accum": 0}, "grad_accum=0"), ({"warmup_steps": -1}, "warmup_steps=-1"),
    ({"max_length": 1}, "max_length=1"),
])
def test_bad_arguments(tiny, kwargs, match):
    model, tok = tiny
    moe.attach(model, [1, 1, 1, 1])
    with pytest.raises(ValueError, match=match):
        finetune(model, tok, TEXTS, progress=False, **kwargs)


def test_no_trainable_parameters_is_an_error(tiny):
    model, tok = tiny
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        finetune(model, tok, TEXTS, progress=False)


def test_finetune_leaves_the_global_rng_alone_and_is_reproducible(tiny):
    from layerif.testing import tiny_model

    losses = []
    for _ in range(2):
        model, tok = tiny_model()
        moe.attach(model, [1, 2, 1, 2], dropout=0.3, seed=0)  # dropout draws from the RNG
        torch.manual_seed(99)
        state = torch.random.get_rng_state()
        hist = finetune(model, tok, TEXTS, epochs=2, batch_size=2, lr=1e-2, seed=3, progress=False)
        assert torch.equal(torch.random.get_rng_state(), state)
        losses.append(hist["loss"].tolist())
    assert losses[0] == losses[1]  # same seed, same data order and dropout masks


def test_train_config_object_and_presets(tiny):
    from layerif.train import TrainConfig

    model, tok = tiny
    moe.attach(model, [1, 1, 1, 1])
    cfg = TrainConfig(epochs=2, batch_size=2, grad_accum=2, lr=1e-3, progress=False)
    hist = finetune(model, tok, TEXTS, cfg, max_length=64)
    assert len(hist) == 4  # 3 micro-batches -> 2 steps per epoch, 2 epochs
    assert "progress" not in cfg.identity() and cfg.identity()["grad_accum"] == 2
    paper = TrainConfig.preset("paper")
    assert (paper.epochs, paper.lr, paper.batch_size * paper.grad_accum) == (3, 3e-4, 128)
    for name in TrainConfig.PRESETS:
        assert TrainConfig.from_dict(TrainConfig.preset(name).to_dict()) == TrainConfig.preset(name)
    with pytest.raises(ValueError, match="max_grad_norm=0"):
        TrainConfig(max_grad_norm=0)
