"""Distillation: losses against direct formulas, students, data order, the trainer's exact resume, CLI."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F

import workbench
from workbench.cli import main
from workbench.config import ModelConfig
from workbench.distill import (TrainingWindows, HiddenProjection, TrainConfig, append_results_row, build_student,
                               distill, distillation_loss, evenly_spaced, forward_kl, hidden_mse, reverse_kl,
                               teacher_written_ids, training_ids)
from workbench.errors import DistillationError, EmptyTextError, InvalidParameterError, ResumeError
from workbench.corpus import builtin_text


@pytest.fixture(scope="module")
def teacher():
    """A 4-layer random model with the bundled tokenizer (fast stand-in for the real teacher)."""
    return workbench.load_model(ModelConfig.tiny(num_hidden_layers=4, hidden_size=32, intermediate_size=64,
                                                 num_attention_heads=2, num_key_value_heads=1))


@pytest.fixture(scope="module")
def train_ids(teacher):
    return training_ids(teacher[1])[:4096]


# ---- losses ----------------------------------------------------------------------------------------

def test_kl_losses_match_direct_formulas():
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, 11, generator=gen) * 2, torch.randn(3, 5, 11, generator=gen) * 2
    for temp in (0.5, 1.0, 3.0):
        p, q = torch.softmax(t.double() / temp, -1), torch.softmax(s.double() / temp, -1)
        forward = (p * (p / q).log()).sum(-1).mean() * temp ** 2
        backward = (q * (q / p).log()).sum(-1).mean() * temp ** 2
        assert forward_kl(s, t, temp).item() == pytest.approx(forward.item(), rel=1e-5)
        assert reverse_kl(s, t, temp).item() == pytest.approx(backward.item(), rel=1e-5)
        # torch's own KL (batchmean over 15 positions) agrees
        torch_kl = F.kl_div(F.log_softmax(s.view(15, 11) / temp, -1), F.log_softmax(t.view(15, 11) / temp, -1),
                            log_target=True, reduction="batchmean") * temp ** 2
        assert forward_kl(s, t, temp).item() == pytest.approx(torch_kl.item(), rel=1e-5)
    assert forward_kl(s, s).item() == pytest.approx(0.0, abs=1e-6)
    assert forward_kl(s, t).item() != pytest.approx(reverse_kl(s, t).item(), rel=1e-3)  # KL is not symmetric


def test_mix_and_ce_losses():
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 4, 9, generator=gen), torch.randn(2, 4, 9, generator=gen)
    y = torch.randint(0, 9, (2, 4), generator=gen)
    ce = -torch.log_softmax(s, -1).gather(-1, y[..., None]).mean()
    assert distillation_loss("ce", s, y).item() == pytest.approx(ce.item(), rel=1e-6)
    mix = distillation_loss("mix", s, y, t, temperature=2.0, alpha=0.3)
    assert mix.item() == pytest.approx(0.3 * ce.item() + 0.7 * forward_kl(s, t, 2.0).item(), rel=1e-6)


def test_temperature_squared_keeps_gradient_scale():
    """Hinton's T^2 factor: for large T the gradient of T^2 * KL tends to (z_s - z_t) / N (mean-centred)."""
    gen = torch.Generator().manual_seed(2)
    s = (torch.randn(1, 50, generator=gen) * 0.1).requires_grad_()
    t = torch.randn(1, 50, generator=gen) * 0.1
    forward_kl(s, t, temperature=100.0).backward()
    expected = ((s - s.mean()) - (t - t.mean())).detach() / 50
    assert torch.allclose(s.grad, expected, rtol=0.02, atol=1e-6)  # independent of T thanks to T^2


@pytest.mark.parametrize("temperature", [0.0, -1.0])
def test_bad_temperature(temperature):
    with pytest.raises(DistillationError, match="temperature"):
        forward_kl(torch.zeros(2, 3), torch.zeros(2, 3), temperature)
    with pytest.raises(DistillationError, match="temperature"):
        TrainConfig(temperature=temperature)


def test_hidden_mse_and_projection():
    a, b = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    assert hidden_mse([a], [b], HiddenProjection(8, 8)).item() == pytest.approx(F.mse_loss(a, b).item())
    proj = HiddenProjection(4, 8)
    assert hidden_mse([torch.randn(2, 3, 4)], [b], proj).requires_grad
    with pytest.raises(DistillationError, match="wider than the teacher"):
        HiddenProjection(16, 8)


# ---- students --------------------------------------------------------------------------------------

def test_evenly_spaced_layers():
    assert evenly_spaced(30, 15) == [0, 2, 4, 6, 8, 10, 12, 14, 17, 19, 21, 23, 25, 27, 29]
    assert evenly_spaced(4, 4) == [0, 1, 2, 3] and evenly_spaced(4, 2) == [0, 3]


def test_layer_student_copies_teacher_layers(teacher):
    model, _ = teacher
    student = build_student(model, "layers:2")
    assert student.config.num_hidden_layers == 2 and student.config.hidden_size == model.config.hidden_size
    for new, old in enumerate([0, 3]):
        for name, tensor in student.model.layers[new].state_dict().items():
            assert torch.equal(tensor, model.model.layers[old].state_dict()[name])
    assert student.lm_head.weight is student.model.embed_tokens.weight  # still tied
    assert student.model.embed_tokens.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()
    ids = torch.tensor([[1, 5, 9, 200]])
    assert torch.equal(build_student(model, "layers:4")(ids), model(ids))  # keeping every layer changes nothing


def test_student_is_a_normal_model(teacher, tmp_path):
    from workbench.engine import SamplingParams, generate
    from workbench.quant import quantize_

    model, tok = teacher
    student = build_student(model, "layers:2")
    out = generate(student, tok, "Hello", SamplingParams(max_tokens=4, ignore_eos=True))
    assert len(out.token_ids) == 4
    workbench.save_pretrained(student, tmp_path / "s", tok)
    loaded, _ = workbench.load_model(tmp_path / "s")
    ids = torch.tensor([[3, 7, 11]])
    assert loaded.config == student.config and torch.equal(loaded(ids), student(ids))
    quantize_(loaded, "int8")
    assert torch.isfinite(loaded(ids)).all()


def test_mlp_student_uses_structured_pruning(teacher, tmp_path):
    from workbench.prune.structured import prune_mlp

    model, tok = teacher
    student = build_student(model, "layers:2+mlp:0.5", tokenizer=tok, calibration_tokens=64)
    assert (student.config.num_hidden_layers, student.config.intermediate_size) == (2, 32)
    assert model.config.intermediate_size == 64  # the teacher is untouched
    expected = prune_mlp(build_student(model, "layers:2"), 0.5, tokenizer=tok, calibration_tokens=64)
    ids = torch.tensor([[5, 17, 300, 2]])
    assert torch.equal(student(ids), expected(ids))
    workbench.save_pretrained(student, tmp_path / "s", tok)
    assert torch.equal(workbench.load_model(tmp_path / "s")[0](ids), student(ids))


def test_scratch_student(teacher):
    model, _ = teacher
    student = build_student(model, "scratch:layers=1,hidden=16,heads=2,kv=1,ffn=24")
    cfg = student.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.head_dim, cfg.vocab_size) == (1, 16, 8, model.config.vocab_size)


@pytest.mark.parametrize("spec,match", [("layers:9", "more layers than the teacher"), ("layers:0", "between 1"),
                                        ("depth:2", "bad student spec"), ("layers:x", "bad student spec"),
                                        ("mlp:1.5", "must be a number in"), ("scratch:width=3", "unknown scratch key"),
                                        ("layers:2+scratch:layers=1", "must come first")])
def test_bad_student_specs(teacher, spec, match):
    with pytest.raises(InvalidParameterError, match=match):  # DistillationError, or PruningError for mlp:F
        build_student(teacher[0], spec)


# ---- data ------------------------------------------------------------------------------------------

def test_train_part_never_overlaps_evaluation():
    train, evaluation = builtin_text("train"), builtin_text("evaluation")
    assert evaluation + "\n\n" + train == builtin_text("all")  # a split between documents
    assert train == builtin_text("calibration")


def test_training_windows_are_seeded_and_cover_each_epoch():
    ids = list(range(100))
    windows = TrainingWindows(ids, seq_len=10, batch_size=3, seed=7)
    epoch = torch.cat([windows[k] for k in range(windows.per_epoch)])
    assert windows.per_epoch == 3 and len(set(epoch[:, 0].tolist())) == 9  # no window twice within an epoch
    assert torch.equal(windows[4], TrainingWindows(ids, 10, 3, seed=7)[4])
    assert not torch.equal(torch.cat([windows[k] for k in range(3)]), torch.cat([windows[k] for k in range(3, 6)]))
    with pytest.raises(EmptyTextError, match="window"):
        TrainingWindows(ids[:15], seq_len=10, batch_size=2)


def test_training_text_sources(teacher, tmp_path):
    _, tok = teacher
    (tmp_path / "a.txt").write_text("alpha beta gamma")
    (tmp_path / "empty.txt").write_text("  \n")
    ids = training_ids(tok, [tmp_path / "a.txt", tmp_path / "a.txt"])
    one = tok.encode("alpha beta gamma", add_special_tokens=False)
    assert ids == one + [tok.eos_token_id] + one
    with pytest.raises(EmptyTextError, match="empty"):
        training_ids(tok, tmp_path / "empty.txt")


def test_teacher_written_data(teacher):
    model, tok = teacher
    ids = teacher_written_ids(model, tok, list(range(1000, 1400)), samples=2, prompt_tokens=5, new_tokens=6)
    assert len(ids) == 2 * (5 + 6 + 1) and ids[:5] == list(range(1000, 1005)) and ids[11] == tok.eos_token_id


# ---- trainer ---------------------------------------------------------------------------------------

def test_lr_schedule():
    cfg = TrainConfig(steps=12, warmup_steps=2, min_lr_ratio=0.1)
    factors = [cfg.lr_factor(s) for s in range(12)]
    assert factors[:3] == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert all(a >= b for a, b in zip(factors[2:], factors[3:]))
    assert cfg.lr_factor(12) == pytest.approx(0.1)


def test_training_lowers_the_loss(teacher, train_ids):
    model = copy.deepcopy(teacher[0])
    with torch.no_grad():
        model.model.norm.weight.mul_(10.0)  # a random model's outputs are near uniform: sharpen them
    student = build_student(model, "layers:2")
    cfg = TrainConfig(steps=8, batch_size=2, seq_len=32, lr=1e-3, warmup_steps=0, loss="kl")
    result = distill(student, model, train_ids[:64], cfg, eval_ids=train_ids[:256], eval_window=64,
                     progress=False)  # 64 tokens = one batch, seen every step
    assert result.history[-1]["loss"] < 0.2 * result.history[0]["loss"]
    assert result.tokens == 8 * 2 * 32 and [e["step"] for e in result.evals] == [0, 8]
    assert math.isfinite(result.ppl_before) and math.isfinite(result.ppl_after)


def test_interrupted_run_resumes_to_identical_weights(teacher, train_ids, tmp_path):
    model, _ = teacher
    cfg = TrainConfig(steps=6, batch_size=2, grad_accum=2, seq_len=16, loss="mix", hidden_weight=0.5,
                      warmup_steps=2)
    straight = distill(build_student(model, "layers:2"), model, train_ids, cfg, progress=False)

    def interrupt(record):
        if record["step"] == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        distill(build_student(model, "layers:2"), model, train_ids, cfg, checkpoint_dir=tmp_path, progress=False,
                on_step=interrupt)
    resumed = distill(build_student(model, "layers:2"), model, train_ids, cfg, checkpoint_dir=tmp_path,
                      resume=True, progress=False)
    assert [r["step"] for r in resumed.history] == [1, 2, 3, 4, 5, 6]  # nothing lost, nothing repeated
    assert [r["loss"] for r in resumed.history] == [r["loss"] for r in straight.history]
    for (name, a), (_, b) in zip(straight.student.state_dict().items(), resumed.student.state_dict().items()):
        assert torch.equal(a, b), name


def test_resume_refuses_another_run(teacher, train_ids, tmp_path):
    model, _ = teacher
    cfg = TrainConfig(steps=1, batch_size=2, seq_len=16)
    with pytest.raises(ResumeError, match="nothing to resume"):
        distill(build_student(model, "layers:2"), model, train_ids, cfg, checkpoint_dir=tmp_path, resume=True,
                progress=False)
    distill(build_student(model, "layers:2"), model, train_ids, cfg, checkpoint_dir=tmp_path, progress=False)
    with pytest.raises(ResumeError, match="student"):
        distill(build_student(model, "layers:1"), model, train_ids, cfg, checkpoint_dir=tmp_path, resume=True,
                progress=False)
    with pytest.raises(ResumeError, match="training settings"):
        distill(build_student(model, "layers:2"), model, train_ids, TrainConfig(steps=1, batch_size=2, seq_len=16,
                loss="rkl"), checkpoint_dir=tmp_path, resume=True, progress=False)


def test_bad_training_input(teacher, train_ids):
    model, _ = teacher
    other_vocab = workbench.load_model(ModelConfig.tiny(vocab_size=100, hidden_size=32, num_attention_heads=2,
                                                        num_key_value_heads=1))[0]
    with pytest.raises(DistillationError, match="vocabulary"):
        distill(other_vocab, model, train_ids, TrainConfig(steps=1), progress=False)
    with pytest.raises(EmptyTextError):
        distill(build_student(model, "layers:2"), model, [], TrainConfig(steps=1), progress=False)
    with pytest.raises(DistillationError, match="loss"):
        TrainConfig(loss="mse")
    with pytest.raises(DistillationError, match="context"):
        distill(build_student(model, "layers:2"), model, train_ids, TrainConfig(seq_len=10_000), progress=False)


def test_results_row_appends(tmp_path):
    import pandas as pd

    path = tmp_path / "r.csv"
    append_results_row(path, {"student": "layers:2", "loss": "kl", "ppl": 3.0})
    append_results_row(path, {"student": "layers:2", "loss": "ce", "ppl": 4.0, "steps": 5})
    frame = pd.read_csv(path)
    assert frame["loss"].tolist() == ["kl", "ce"] and math.isnan(frame["steps"][0])


# ---- CLI -------------------------------------------------------------------------------------------

CLI_ARGS = ["distill", "--model", "tiny-random", "--student", "layers:1", "--steps", "2", "--seq-len", "16",
            "--batch-size", "2", "--eval-tokens", "128", "--threads", "1"]


def test_cli_distill_json_and_resume(tmp_path, capsys):
    assert main(CLI_ARGS + ["--loss", "rkl", "--checkpoint-dir", str(tmp_path / "run"), "--json",
                            "--results", str(tmp_path / "r.csv")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"student", "loss", "steps", "tokens", "ppl_before", "ppl_after", "wall_s"} <= set(out)
    assert (out["student"], out["loss"], out["steps"], out["tokens"]) == ("layers:1", "rkl", 2, 2 * 2 * 16)
    assert math.isfinite(out["ppl_after"]) and (tmp_path / "r.csv").is_file()
    assert main(CLI_ARGS + ["--loss", "rkl", "--resume", str(tmp_path / "run"), "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["steps"] == 2 and again["ppl_after"] == out["ppl_after"]  # already finished: nothing retrained


@pytest.mark.parametrize("extra,match", [(["--student", "layers:5"], "more layers"),
                                         (["--temperature", "0"], "temperature"),
                                         (["--loss", "kl", "--resume", "/nonexistent/dir"], "nothing to resume")])
def test_cli_distill_bad_input(extra, match, capsys):
    assert main(CLI_ARGS + extra) == 2
    err = capsys.readouterr().err
    assert err.startswith("workbench: error:") and match in err
