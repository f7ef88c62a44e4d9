"""Peers in a perf sweep: llama.cpp's own OpenAI server (`python -m llama_cpp.server`, from the optional
`llama-cpp-python[server]`) on the model exported to GGUF at equal bits, when it is installed."""

from __future__ import annotations

import importlib.util

# our --quant spec -> the GGUF type of equal bits llama.cpp would serve
GGUF_TYPE = {None: "F32", "int8": "Q8_0", "q8_0": "Q8_0", "q4_0": "Q4_0", "q4_1": "Q4_1"}


def llama_cpp_peer(quant: str | None = None) -> tuple[bool, str]:
    """(available, reason): whether the llama.cpp server can join a sweep for `quant`, and why not."""
    if quant not in GGUF_TYPE:
        return False, f"no GGUF type of equal bits for --quant {quant} (llama.cpp peers: {', '.join(map(str, GGUF_TYPE))})"
    for module, extra in (("llama_cpp", "llama-cpp-python"), ("llama_cpp.server", "llama-cpp-python[server]")):
        try:
            found = importlib.util.find_spec(module) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            return False, f"llama.cpp peer skipped: {module} is not installed (pip install '{extra}')"
    return True, f"llama.cpp server on GGUF {GGUF_TYPE[quant]}"
