"""The console script: JSON output, and bad input as a clear stderr message with a non-zero exit."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

WORKBENCH = [sys.executable, "-m", "workbench.cli"]


def run(*args, ok=True):
    p = subprocess.run(WORKBENCH + list(args), capture_output=True, text=True, timeout=600)
    if ok:
        assert p.returncode == 0, p.stderr
    return p


def test_console_script_is_installed():
    assert (Path(sys.executable).parent / "workbench").exists()


def test_info_json():
    out = json.loads(run("info", "--json").stdout)
    assert out["parameters"] == out["parameters_from_config"] == 134_515_008
    assert out["bytes"]["float32"] == 4 * 134_515_008


def test_ppl_json():
    out = json.loads(run("ppl", "--max-tokens", "600", "--window", "300", "--json").stdout)
    assert set(out) >= {"ppl", "tokens", "window", "stride"}
    assert out["tokens"] == 600 and out["window"] == out["stride"] == 300 and 5 < out["ppl"] < 40


def test_ppl_on_user_text(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("The quick brown fox jumps over the lazy dog. " * 40)
    out = json.loads(run("ppl", "--text-file", str(f), "--max-tokens", "256", "--window", "128", "--json").stdout)
    assert out["tokens"] == 256 and out["ppl"] < 5  # repeated text becomes easy to predict


def test_bench_decode_json(tmp_path):
    target = tmp_path / "bench.json"
    out = json.loads(run("bench", "decode", "--model", "tiny-random", "--prompt-tokens", "16", "--new-tokens",
                         "4", "--repeats", "1", "--warmup", "0", "--batch", "2", "--output", str(target),
                         "--json").stdout)
    assert set(out) >= {"prefill_tok_s", "decode_tok_s", "gb_s", "model_bytes", "peak_rss_mb"}
    assert out["decode_tok_s"] > 0 and json.loads(target.read_text()) == out


def test_generate_json():
    out = json.loads(run("generate", "What is 2+2?", "--chat", "--max-tokens", "12", "--json").stdout)
    assert out["completion_tokens"] <= 12 and out["text"]


@pytest.mark.parametrize("args, message", [
    (["info", "--model", "no-such-model"], "known"),
    (["ppl", "--text-file", "/nonexistent.txt"], "not found"),
    (["ppl", "--window", "1"], "window"),
    (["generate", "hi", "--temperature", "-1"], "temperature"),
    (["generate", "hi", "--model", "tiny-random", "--max-tokens", "100000"], "context window"),
    (["bench", "decode", "--batch", "0"], "--batch"),
    (["info", "--dtype", "int3"], "dtype"),
])
def test_bad_input_is_a_clear_error(args, message):
    p = run(*args, ok=False)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("workbench: error:") and message in p.stderr
    assert "Traceback" not in p.stderr


def test_empty_and_corrupt_files(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    p = run("ppl", "--text-file", str(empty), ok=False)
    assert p.returncode == 2 and "empty" in p.stderr
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 20)
    p = run("info", "--model", str(bad), ok=False)
    assert p.returncode == 2 and "broken.gguf" in p.stderr and "Traceback" not in p.stderr


def test_chat_keeps_the_conversation():
    p = subprocess.run(WORKBENCH + ["chat", "--model", "tiny-random", "--max-tokens", "4"], input="hello\nand again\n\n",
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("> ") == 3  # two turns answered, then the empty line ends the chat


def test_quant_list_and_quantized_ppl():
    specs = json.loads(run("quant", "list", "--json").stdout)["specs"]
    assert {"int8", "int4-g32", "int4-g64", "int4-g128", "w8a8", "q8_0", "q4_0", "q4_1"} <= set(specs)
    out = json.loads(run("ppl", "--quant", "q4_0", "--max-tokens", "300", "--window", "300", "--json").stdout)
    assert out["quant"] == "q4_0" and 5 < out["ppl"] < 60
    p = run("ppl", "--quant", "int3", ok=False)
    assert p.returncode == 2 and "int4-g128" in p.stderr


def test_export_gguf_and_directory(tmp_path):
    out = json.loads(run("export", str(tmp_path / "m.gguf"), "--model", "tiny-random", "--quant", "q4_0",
                         "--type", "q4_0", "--json").stdout)
    assert out["type"] == "Q4_0" and (tmp_path / "m.gguf").is_file()
    info = json.loads(run("info", "--model", str(tmp_path / "m.gguf"), "--json").stdout)
    assert info["config"]["hidden_size"] == 64
    run("export", str(tmp_path / "hf"), "--model", "tiny-random")
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    out = json.loads(run("export", str(tmp_path / "int8"), "--model", "tiny-random", "--quant", "int8",
                         "--json").stdout)
    assert out["type"] == "int8" and (tmp_path / "int8" / "quantization.json").is_file()
    float_info = json.loads(run("info", "--model", str(tmp_path / "hf"), "--json").stdout)
    int8_info = json.loads(run("info", "--model", str(tmp_path / "int8"), "--json").stdout)
    assert int8_info["loaded_bytes"] < float_info["loaded_bytes"] / 3  # packed int8 layers came back
