"""Bad command lines: each ends with exit status 2 and one line on stderr, never a traceback.

The table runs `workbench.cli.main` in process (fast; argparse's own errors included), on the tiny
random model wherever a model must load; the broken-pipe case runs the real console script.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from workbench.cli import EXIT_BAD_INPUT, EXIT_BROKEN_PIPE, main

TINY = ["--model", "tiny-random"]
SMALL_BENCH = ["--prompt-tokens", "4", "--new-tokens", "2", "--repeats", "1", "--warmup", "0"]
UNWRITABLE = "/proc/no-such-dir/out"  # /proc refuses new files, also for root


def _files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("caf\xe9 ".encode("latin-1") * 50)
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\x00" * 20)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    torch.save({"weights": torch.zeros(2)}, foreign / "checkpoint.pt")  # a torch file, not ours
    return {"EMPTY": str(empty), "LATIN1": str(latin1), "BROKEN": str(broken), "FOREIGN": str(foreign),
            "TMP": str(tmp_path), "OTHERVOCAB": str(_other_vocabulary(tmp_path))}


def _other_vocabulary(tmp_path):
    """A saved model whose vocabulary (512 tokens) is not the tiny random model's (49152): a bad draft."""
    from workbench.checkpoints import load_tokenizer, random_model, save_pretrained
    from workbench.config import ModelConfig

    path = tmp_path / "other-vocab"
    save_pretrained(random_model(ModelConfig.tiny(vocab_size=512)), path, load_tokenizer("smollm2-135m"))
    return path


CASES = [
    # (command line, a word the message must hold); EMPTY, LATIN1, BROKEN, FOREIGN, TMP name test files
    ([], "required"),
    (["frobnicate"], "invalid choice"),
    (["info", "--bogus"], "unrecognized"),
    (["bench"], "required"),
    (["generate"], "prompt"),
    (["bench", "decode", "--batch", "x"], "invalid int"),
    (["info", "--kernels", "maybe"], "invalid choice"),
    (["distill", "--steps", "1"], "--student"),
    (["distill", "--student", "layers:2", "--steps", "1", "--loss", "bogus"], "invalid choice"),
    (["ppl", "--max-tokens", "many"], "invalid int"),
    (["info", "--model", "no-such-model"], "known"),
    (["info", "--model", "BROKEN"], "broken.gguf"),
    (["info", *TINY, "--dtype", "int3"], "dtype"),
    (["info", *TINY, "--device", "tpu"], "device"),
    (["info", *TINY, "--device", "cuda:x"], "device"),
    (["info", *TINY, "--threads", "0"], "--threads"),
    (["info", *TINY, "--threads", "-2"], "--threads"),
    (["info", *TINY, "--quant", "int3"], "int4-g128"),
    (["info", *TINY, "--prune", "bogus:0.5"], "bogus"),
    (["ppl", *TINY, "--text-file", "/nonexistent.txt"], "not found"),
    (["ppl", *TINY, "--calib", "bogus:512"], "calibration source"),
    (["ppl", *TINY, "--calib", "builtin:lots", "--quant", "int4-g128-gptq"], "token count"),
    (["ppl", *TINY, "--calib", "file:/nonexistent.txt:64", "--quant", "w8a8-smoothquant"], "not found"),
    (["ppl", *TINY, "--corpus", "wikipedia"], "licenses"),
    (["ppl", *TINY, "--corpus", "licenses", "--text-file", "EMPTY"], "give one"),
    (["ppl", *TINY, "--text-file", "EMPTY"], "empty"),
    (["ppl", *TINY, "--text-file", "LATIN1"], "UTF-8"),
    (["ppl", *TINY, "--window", "1"], "window"),
    (["ppl", *TINY, "--max-tokens", "1"], "--max-tokens"),
    (["ppl", *TINY, "--batch-size", "0"], "--batch-size"),
    (["generate", "hi", *TINY, "--temperature", "-1"], "temperature"),
    (["generate", "hi", *TINY, "--top-p", "0"], "top_p"),
    (["generate", "hi", *TINY, "--top-p", "1.5"], "top_p"),
    (["generate", "hi", *TINY, "--top-k", "-1"], "top_k"),
    (["generate", "hi", *TINY, "--max-tokens", "0"], "max_tokens"),
    (["generate", "hi", *TINY, "--repetition-penalty", "0"], "repetition_penalty"),
    (["generate", "hi", *TINY, "--max-tokens", "100000"], "context"),
    (["bench", "decode", *TINY, "--batch", "0"], "--batch"),
    (["bench", "decode", *TINY, "--new-tokens", "1"], "--new-tokens"),
    (["bench", "decode", *TINY, "--warmup", "-1"], "--warmup"),
    (["bench", "decode", *TINY, "--prompt-tokens", "100000"], "context"),
    (["bench", "decode", *TINY, *SMALL_BENCH, "--output", UNWRITABLE + ".json"], "no-such-dir"),
    (["bench", "kv", *TINY, "--block-size", "0"], "--block-size"),
    (["bench", "batching", *TINY, "--policy", "bogus"], "bogus"),
    (["bench", "batching", *TINY, "--rate", "0"], "--rate"),
    (["bench", "batching", *TINY, "--min-output", "5", "--max-output", "1"], "--max-output"),
    (["export", "TMP/m.gguf", *TINY, "--type", "Q5_K"], "Q5_K"),
    (["export", "TMP/dir", *TINY, "--type", "Q4_0"], ".gguf outputs only"),
    (["export", "TMP/m.gguf", *TINY, "--quant", "int8"], "quantize twice"),
    (["export", "TMP/m.gguf", *TINY, "--quant", "q4_0", "--type", "Q8_0"], "quantize twice"),
    (["export", UNWRITABLE + ".gguf", *TINY], "no-such-dir"),
    (["export", "BROKEN/sub", *TINY], "broken.gguf"),
    (["verify", *TINY, "--quant", "int8"], "--quant"),
    (["verify", *TINY, "--prune", "magnitude:0.5"], "--prune"),
    (["verify", *TINY, "--dtype", "bfloat16"], "float32"),
    (["verify", *TINY, "--new-tokens", "0"], "--new-tokens"),
    (["generate", "hi", *TINY, "--draft", "tiny-random", "--draft-tokens", "0"], "--draft-tokens"),
    (["generate", "hi", *TINY, "--draft-quant", "int4-g128"], "--draft"),
    (["generate", "hi", *TINY, "--draft", "OTHERVOCAB"], "vocabulary has 512 tokens"),
    (["generate", "hi", *TINY, "--draft", "tiny-random", "--repetition-penalty", "1.2"], "repetition_penalty"),
    (["distill", *TINY, "--student", "bogus", "--steps", "1"], "bogus"),
    (["distill", *TINY, "--student", "layers:1", "--steps", "1", "--quant", "int8"], "quantize"),
    (["distill", *TINY, "--student", "layers:1", "--steps", "1", "--seq-len", "16", "--batch-size", "1",
      "--eval-tokens", "32", "--eval-window", "16", "--resume", "FOREIGN"], "checkpoint"),
    (["finetune", "--steps", "1"], "--out"),
    (["finetune", *TINY, "--steps", "1", "--out", "TMP/a", "--lora", "r=0"], "rank"),
    (["finetune", *TINY, "--steps", "1", "--out", "TMP/a", "--lora", "r=8,beta=2"], "beta"),
    (["finetune", *TINY, "--steps", "1", "--out", "TMP/a", "--target", "q_proj,lm_head"], "lm_head"),
    (["finetune", *TINY, "--steps", "0", "--out", "TMP/a"], "steps"),
    (["finetune", *TINY, "--steps", "1", "--out", "FOREIGN"], "--resume"),
    (["finetune", *TINY, "--steps", "1", "--out", "TMP/none", "--resume"], "nothing to resume"),
    (["finetune", *TINY, "--steps", "1", "--out", "TMP/a", "--quant", "w8a8", "--seq-len", "8",
      "--batch-size", "1", "--eval-tokens", "16", "--eval-window", "8"], "w8a8"),
    (["merge", "TMP", "--out", "TMP/m"], "adapter_config.json"),
    (["merge", "TMP"], "--out"),
]


def run_cli(argv, capsys) -> tuple[int, str]:
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's errors exit through our Parser.error
        status = e.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize("argv, word", CASES, ids=[" ".join(a)[:60] or "(nothing)" for a, _ in CASES])
def test_bad_command_line(argv, word, tmp_path, capsys):
    files = _files(tmp_path)
    argv = [next((a.replace(k, v, 1) for k, v in files.items() if a.startswith(k)), a) for a in argv]
    status, err = run_cli(argv, capsys)
    lines = err.strip().splitlines()
    assert status == EXIT_BAD_INPUT, err
    assert len(lines) == 1 and "error:" in lines[0] and "Traceback" not in err, err
    assert word in lines[0], lines[0]


def test_the_table_is_long_enough():
    assert len(CASES) >= 40


@pytest.mark.skipif(torch.cuda.is_available(), reason="this torch sees a CUDA device")
def test_cuda_on_a_cpu_only_torch(capsys):
    status, err = run_cli(["info", *TINY, "--device", "cuda"], capsys)
    assert status == EXIT_BAD_INPUT and "no CUDA device" in err and len(err.strip().splitlines()) == 1


def test_threads_are_honoured(capsys):
    before = torch.get_num_threads()
    try:
        assert main(["info", *TINY, "--threads", "1", "--json"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    capsys.readouterr()


def test_output_into_a_closed_pipe_stops_quietly():
    """`workbench quant list | true`: the reader is gone before we write; no traceback, status 141."""
    script = f"'{sys.executable}' -m workbench.cli quant list | true; echo \"status=${{PIPESTATUS[0]}}\""
    p = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=300)
    assert f"status={EXIT_BROKEN_PIPE}" in p.stdout, (p.stdout, p.stderr)
    assert "Traceback" not in p.stderr and "BrokenPipe" not in p.stderr, p.stderr
