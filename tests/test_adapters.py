"""LoRA adapters: the identity at start, only the adapter trains, PEFT's layout both ways (against peft on
transformers' model), merge equals unmerged, a frozen int8 base, exact resume, and adapters that do not fit."""

from __future__ import annotations

import json
import tempfile

import pytest
import torch

import workbench
from workbench import kernels
from workbench.adapters import (CONFIG_FILE, WEIGHTS_FILE, LoraConfig, LoRALinear, add_lora, finetune, load_adapter,
                                lora_layers, merge_lora, parse_lora_spec, read_adapter_config, save_adapter,
                                trainable_parameters, training_bytes, unload_lora)
from workbench.cli import main
from workbench.config import ModelConfig
from workbench.distill import TrainConfig, training_ids
from workbench.errors import AdapterError, DistillationError, ResumeError
from workbench.quant import quantize_
from workbench.quant.linear import Int8WeightOnlyLinear

TINY = ModelConfig.tiny(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                        num_key_value_heads=2)
PROMPT = "The capital of France is Paris, and the capital of Italy is"


def tiny(config=TINY, seed=0):
    return workbench.load_model(config, seed=seed)


def ids_of(tokenizer, text=PROMPT):
    return torch.tensor([tokenizer.encode(text)])


def randomize_b(model, std=0.05, seed=1):
    """A trained-looking adapter: B away from zero, so the adapter changes the logits."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.weight.copy_(torch.randn(layer.lora_B.weight.shape, generator=gen) * std)
    return model


def peft():
    return pytest.importorskip("peft", reason="peft is not installed (pip install peft, or the test extra)")


@pytest.fixture(scope="module")
def train_ids():
    return training_ids(tiny()[1])[:4096]


# ---- the layer -------------------------------------------------------------------------------------

def test_untrained_adapter_is_the_identity_and_only_it_trains():
    model, tok = tiny()
    x = ids_of(tok)
    before = model(x)
    add_lora(model, LoraConfig(r=4, alpha=8, target_modules=("q_proj", "v_proj", "down_proj")))
    layers = lora_layers(model)
    assert sorted(layers) == sorted(f"model.layers.{i}.{m}" for i in range(2)
                                    for m in ("self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj"))
    assert all(l.lora_A.weight.abs().sum() > 0 and l.lora_B.weight.abs().sum() == 0 for l in layers.values())
    assert torch.equal(model(x), before)  # B = 0: the adapter adds exactly nothing
    expected = sum(l.r * (l.in_features + l.out_features) for l in layers.values())
    assert sum(p.numel() for p in trainable_parameters(model)) == expected
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(".lora_A." in n or ".lora_B." in n for n in names)
    randomize_b(model)
    assert (model(x) - before).abs().max() > 1e-3
    unload_lora(model)
    assert not lora_layers(model) and torch.equal(model(x), before)


def test_layer_computes_base_plus_scaled_low_rank_update():
    base = torch.nn.Linear(16, 24, bias=False)
    layer = LoRALinear(base, r=4, scaling=2.0, generator=torch.Generator().manual_seed(0))
    torch.nn.init.normal_(layer.lora_B.weight)
    x = torch.randn(3, 16)
    want = x @ base.weight.T + 2.0 * (x @ layer.lora_A.weight.T @ layer.lora_B.weight.T)
    torch.testing.assert_close(layer(x), want)
    torch.testing.assert_close(layer.merged()(x), want, atol=1e-5, rtol=1e-5)


def test_specs_and_scaling():
    config = parse_lora_spec("r=8,alpha=16,dropout=0.05", "q_proj, v_proj")
    assert (config.r, config.alpha, config.dropout, config.target_modules, config.scaling) == (
        8, 16.0, 0.05, ("q_proj", "v_proj"), 2.0)
    assert parse_lora_spec("r=16,alpha=16,rslora=1", "all-linear").scaling == pytest.approx(4.0)
    assert len(parse_lora_spec("r=4", "all-linear").target_modules) == 7
    for spec, targets, word in [("r=0", "q_proj", "rank"), ("r=8,beta=2", "q_proj", "beta"),
                                ("r=8,alpha=x", "q_proj", "not a number"), ("r=8,dropout=1", "q_proj", "dropout"),
                                ("r=8", "lm_head", "lm_head"), ("r=8", "", "none given")]:
        with pytest.raises(AdapterError, match=word):
            parse_lora_spec(spec, targets)


# ---- PEFT's layout, both ways ----------------------------------------------------------------------

def _transformers_model(model, tokenizer):
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory() as tmp:
        workbench.save_pretrained(model, tmp, tokenizer)
        return AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()


@torch.inference_mode()
def test_peft_loads_our_adapter_on_transformers_model_with_our_logits(tmp_path):
    """On the bundled model: our adapter, saved in PEFT's layout, gives transformers + peft our logits."""
    from peft import PeftModel

    peft()
    model, tok = workbench.load_model("smollm2-135m")
    reference = _transformers_model(model, tok)
    x = ids_of(tok)
    plain = model(x)
    randomize_b(add_lora(model, LoraConfig(r=8, alpha=16, target_modules=("q_proj", "v_proj", "o_proj", "up_proj"))),
                std=0.02)
    ours = model(x)
    assert (ours - plain).abs().max() > 0.05  # the adapter matters, so agreeing on it means something
    save_adapter(model, tmp_path, "smollm2-135m")
    assert {p.name for p in tmp_path.iterdir()} == {CONFIG_FILE, WEIGHTS_FILE}
    theirs = PeftModel.from_pretrained(reference, str(tmp_path)).eval()(x).logits
    assert (ours - theirs).abs().max().item() < 1e-4


@torch.inference_mode()
def test_adapter_saved_by_peft_loads_into_ours_with_its_logits(tmp_path):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    peft()
    model, tok = tiny()
    x = ids_of(tok)
    torch.manual_seed(0)  # init_lora_weights=False: PEFT draws B at random too, a non-trivial adapter
    peft_model = get_peft_model(_transformers_model(model, tok), PeftLoraConfig(
        r=4, lora_alpha=12, target_modules=["k_proj", "o_proj", "gate_proj"], init_lora_weights=False,
        task_type="CAUSAL_LM")).eval()
    peft_model.save_pretrained(str(tmp_path))
    theirs = peft_model(x).logits
    plain = model(x)
    load_adapter(model, tmp_path)
    assert sorted({n.rsplit(".", 1)[-1] for n in lora_layers(model)}) == ["gate_proj", "k_proj", "o_proj"]
    assert (theirs - plain).abs().max() > 1e-3
    assert (model(x) - theirs).abs().max().item() < 1e-4


def test_save_and_load_round_trip_keeps_layers_and_rslora(tmp_path):
    model, tok = tiny()
    config = LoraConfig(r=2, alpha=3, target_modules=("up_proj",), layers=(1,), use_rslora=True)
    randomize_b(add_lora(model, config))
    save_adapter(model, tmp_path, "tiny")
    raw = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert (raw["peft_type"], raw["r"], raw["lora_alpha"], raw["layers_to_transform"]) == ("LORA", 2, 3, [1])
    assert read_adapter_config(tmp_path)[0] == config
    other, _ = tiny()
    load_adapter(other, tmp_path)
    assert list(lora_layers(other)) == ["model.layers.1.mlp.up_proj"]
    torch.testing.assert_close(other(ids_of(tok)), model(ids_of(tok)), atol=0, rtol=0)


# ---- merge -----------------------------------------------------------------------------------------

@torch.inference_mode()
@pytest.mark.parametrize("quant", [None, "int8"])
def test_merged_model_equals_unmerged_and_saves_quantizes_loads(quant, tmp_path):
    from workbench.variant import load_variant

    model, tok = tiny()
    if quant:
        quantize_(model, quant)
    randomize_b(add_lora(model, LoraConfig(r=4, alpha=8, target_modules=("q_proj", "k_proj", "v_proj", "o_proj",
                                                                          "gate_proj", "up_proj", "down_proj"))))
    x = ids_of(tok)
    with kernels.using_quantized_activations("float"):  # the weights' own function: int8 kernels may round x
        unmerged = model(x)
        merge_lora(model)
        assert not lora_layers(model) and all(p.requires_grad for p in model.parameters())
        assert all(type(m) is torch.nn.Linear for n, m in model.named_modules() if n.endswith("_proj"))
        merged = model(x)  # (the head of a quantized base stays quantized)
        assert (merged - unmerged).abs().max().item() < 1e-4
        workbench.save_pretrained(model, tmp_path, tok)
        reloaded, _ = workbench.load_model(tmp_path)
        torch.testing.assert_close(reloaded(x), merged)
    if quant is None:  # a merged float model quantizes like any other (a quantized base keeps its other layers)
        int8, _ = load_variant(tmp_path, quant="int8", kernels=False)
        assert isinstance(int8.model.layers[0].self_attn.q_proj, Int8WeightOnlyLinear)
        assert (int8(x) - merged).abs().max().item() < 0.5  # int8 rounding only


def test_merge_command_writes_a_model_that_serves_the_adapted_logits(tmp_path, capsys):
    model, tok = tiny(ModelConfig.tiny())  # the CLI's tiny-random
    randomize_b(add_lora(model, LoraConfig(r=4, alpha=8)))
    save_adapter(model, tmp_path / "adapter", "tiny-random")
    assert main(["merge", str(tmp_path / "adapter"), "--out", str(tmp_path / "merged"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["base"] == "tiny-random"
    merged, _ = workbench.load_model(tmp_path / "merged")
    with torch.inference_mode():
        assert (merged(ids_of(tok)) - model(ids_of(tok))).abs().max().item() < 1e-4


# ---- training --------------------------------------------------------------------------------------

def test_finetune_resumes_to_the_same_adapter(train_ids, tmp_path):
    config = TrainConfig(steps=6, batch_size=2, seq_len=16, loss="ce", lr=1e-2, warmup_steps=1, checkpoint_every=2)
    lora = LoraConfig(r=4, alpha=8, dropout=0.1, target_modules=("q_proj", "v_proj", "down_proj"))
    model, _ = tiny()
    straight = finetune(model, train_ids[:64], lora, config, out_dir=tmp_path / "a", progress=False)
    assert not model.training  # back in eval mode (dropout off) after training

    def interrupt(record):
        if record["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        finetune(tiny()[0], train_ids[:64], lora, config, out_dir=tmp_path / "b", progress=False, on_step=interrupt)
    assert not (tmp_path / "b" / WEIGHTS_FILE).exists()
    checkpoint = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert checkpoint["student"] and all(".lora_" in k for k in checkpoint["student"])  # the adapter only
    resumed_model, _ = tiny()
    resumed = finetune(resumed_model, train_ids[:64], lora, config, out_dir=tmp_path / "b", resume=True,
                       progress=False)
    assert [r["step"] for r in resumed.history] == [1, 2, 3, 4, 5, 6]
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]  # dropout's RNG too
    a, b = lora_layers(model), lora_layers(resumed_model)
    assert all(torch.equal(a[n].lora_A.weight, b[n].lora_A.weight) and torch.equal(a[n].lora_B.weight, b[n].lora_B.weight)
               for n in a)
    assert (tmp_path / "b" / WEIGHTS_FILE).is_file()
    with pytest.raises(ResumeError, match="run settings"):  # another rank, same directory
        finetune(tiny()[0], train_ids[:64], LoraConfig(r=2, alpha=8, dropout=0.1, target_modules=lora.target_modules),
                 config, out_dir=tmp_path / "b", resume=True, progress=False)
    with pytest.raises(ResumeError, match="run settings"):  # the same adapter on another base
        finetune(tiny(seed=5)[0], train_ids[:64], lora, config, out_dir=tmp_path / "b", resume=True, progress=False)


def test_lora_on_the_bundled_model_frozen_at_int8_learns_and_leaves_the_base(model_and_tokenizer, tmp_path):
    """QLoRA's idea: the base's projections are int8 layers, frozen; only the float32 adapter trains."""
    model, tok = workbench.load_model("smollm2-135m")
    quantize_(model, "int8")
    frozen = {n: m.qweight.clone() for n, m in model.named_modules() if isinstance(m, Int8WeightOnlyLinear)}
    text = training_ids(tok)[:17]  # one 17-token window, seen every step: the loss must fall
    config = TrainConfig(steps=3, batch_size=1, seq_len=17, loss="ce", lr=1e-2, warmup_steps=0)
    result = finetune(model, text, LoraConfig(r=4, alpha=8), config, out_dir=tmp_path, progress=False)
    assert result.history[-1]["loss"] < result.history[0]["loss"] - 0.3, [r["loss"] for r in result.history]
    layers = lora_layers(model)
    assert len(layers) == 2 * model.config.num_hidden_layers
    assert all(isinstance(l.base_layer, Int8WeightOnlyLinear) and l.lora_A.weight.dtype == torch.float32
               for l in layers.values())
    assert all(l.lora_B.weight.abs().sum() > 0 for l in layers.values())  # gradients reached layer 0 too
    assert set(layers) <= set(frozen) and all(torch.equal(layers[n].base_layer.qweight, frozen[n]) for n in layers)
    memory = training_bytes(model)
    assert memory["trainable_params"] == sum(l.r * (l.in_features + l.out_features) for l in layers.values())
    full = training_bytes(model_and_tokenizer[0])  # full fine-tuning: every weight trains
    assert full["optimizer_bytes"] == 8 * full["trainable_params"] and full["frozen_bytes"] == 0
    assert memory["total_bytes"] < full["total_bytes"] / 10


def test_trainer_refuses_a_loss_that_needs_the_missing_teacher(train_ids):
    model, _ = tiny()
    add_lora(model, LoraConfig())
    with pytest.raises(DistillationError, match="teacher"):
        from workbench.distill import distill

        distill(model, None, train_ids, TrainConfig(steps=1, loss="kl"), progress=False)
    with pytest.raises(AdapterError, match="ce"):
        finetune(tiny()[0], train_ids, LoraConfig(), TrainConfig(steps=1, loss="kl"), out_dir="unused", progress=False)


# ---- adapters that do not fit ----------------------------------------------------------------------

def _saved(tmp_path, config=TINY, lora=None):
    model, _ = tiny(config)
    randomize_b(add_lora(model, lora or LoraConfig(r=4, alpha=8)))
    return save_adapter(model, tmp_path / "adapter")


def test_adapter_for_other_shapes_names_the_tensor_and_both_shapes(tmp_path):
    path = _saved(tmp_path, ModelConfig.tiny(num_hidden_layers=2, hidden_size=48, intermediate_size=64,
                                             num_attention_heads=4, num_key_value_heads=2))
    model, _ = tiny()
    with pytest.raises(AdapterError, match=r"q_proj\.lora_A\.weight has shape \(4, 48\).*needs \(4, 32\)"):
        load_adapter(model, path)
    assert not lora_layers(model)  # nothing half-loaded


def test_adapter_for_more_layers_or_other_targets_names_what_differs(tmp_path):
    deeper = _saved(tmp_path, ModelConfig.tiny(num_hidden_layers=3, hidden_size=32, intermediate_size=64,
                                               num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(AdapterError, match=r"name no q_proj/v_proj projection of this model \(2 layers\).*layers\.2"):
        load_adapter(tiny()[0], deeper)
    shallower = _saved(tmp_path / "s", ModelConfig.tiny(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                                        num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(AdapterError, match=r"lacks 4 tensor\(s\).*layers\.1"):
        load_adapter(tiny()[0], shallower)
    path = _saved(tmp_path / "t")
    raw = json.loads((path / CONFIG_FILE).read_text())
    (path / CONFIG_FILE).write_text(json.dumps({**raw, "target_modules": ["q_proj"]}))  # file still holds v_proj
    with pytest.raises(AdapterError, match="v_proj"):
        load_adapter(tiny()[0], path)
    (path / CONFIG_FILE).write_text(json.dumps({**raw, "target_modules": ["embed_tokens"]}))
    with pytest.raises(AdapterError, match="embed_tokens"):
        load_adapter(tiny()[0], path)


@pytest.mark.parametrize("change, word", [({"use_dora": True}, "use_dora"), ({"bias": "all"}, "bias"),
                                          ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
                                          ({"rank_pattern": {"q_proj": 2}}, "rank_pattern"),
                                          ({"peft_type": "IA3"}, "IA3"), ({"r": 0}, "rank")])
def test_settings_we_cannot_run_are_refused_by_name(tmp_path, change, word):
    path = _saved(tmp_path)
    raw = json.loads((path / CONFIG_FILE).read_text())
    (path / CONFIG_FILE).write_text(json.dumps({**raw, **change}))
    with pytest.raises(AdapterError, match=word):
        load_adapter(tiny()[0], path)


def test_other_refusals(tmp_path):
    with pytest.raises(AdapterError, match="not an adapter directory"):
        load_adapter(tiny()[0], tmp_path)
    model, _ = tiny()
    quantize_(model, "w8a8")
    with pytest.raises(AdapterError, match="w8a8"):
        add_lora(model, LoraConfig())
    model, _ = tiny()
    add_lora(model, LoraConfig())
    with pytest.raises(AdapterError, match="already"):
        add_lora(model, LoraConfig())
    with pytest.raises(AdapterError, match="match no module"):
        add_lora(tiny()[0], LoraConfig(layers=(7,)))
    with pytest.raises(AdapterError, match="no LoRA adapter"):
        merge_lora(tiny()[0])


def test_cli_finetune_then_merge(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["finetune", "--model", "tiny-random", "--lora", "r=4,alpha=8", "--target", "q_proj,down_proj",
            "--steps", "2", "--seq-len", "16", "--batch-size", "2", "--eval-tokens", "64", "--eval-window", "32",
            "--out", str(out), "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["steps"] == 2 and result["trainable_parameters"] > 0 and result["ppl_after"] > 0
    assert {p.name for p in out.iterdir()} >= {CONFIG_FILE, WEIGHTS_FILE, "checkpoint.pt"}
    assert main(args[:args.index("--steps") + 1] + ["3"] + args[args.index("--steps") + 2:] + ["--resume"]) == 2
    assert "settings" in capsys.readouterr().err  # more steps is another run: the schedule differs
    assert main(["merge", str(out), "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "config.json").is_file()
