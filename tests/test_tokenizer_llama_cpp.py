"""Our tokenizer against llama.cpp's, token for token: the authoritative reference for GGUF files.

Which reference decides, and why: the bundled model ships as GGUF, whose `tokenizer.ggml.pre` field
("smollm") names the pre-tokenizer llama.cpp applies: every digit split off alone, then GPT-2's rule.
llama.cpp is the runtime that file was made for, so where references disagree its ids are the ones
the model expects. transformers' GGUF conversion lacks the digit split and differs where whitespace
precedes a digit ("a 12" and similar); `test_tokenizer.py` compares with it on texts where both
agree. This test runs where llama-cpp-python is installed (an optional peer) and skips elsewhere.
"""

from __future__ import annotations

import pytest

from workbench.corpus import builtin_text

from test_tokenizer import TEXTS

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (an optional peer)")

DIGITS_AFTER_SPACE = "In 2024 we had 3 cats, 12 dogs and  7 fish; version 3.11.7 costs $ 42."


@pytest.fixture(scope="module")
def vocab(bundled_gguf):
    return llama_cpp.Llama(model_path=str(bundled_gguf), vocab_only=True, verbose=False)


def theirs(vocab, text: str) -> list[int]:
    return vocab.tokenize(text.encode("utf-8"), add_bos=False, special=True)


@pytest.mark.parametrize("name", [n for n in TEXTS if TEXTS[n]])
def test_ids_match_llama_cpp(model_and_tokenizer, vocab, name):
    tok = model_and_tokenizer[1]
    assert tok.encode(TEXTS[name], add_special_tokens=False) == theirs(vocab, TEXTS[name])


def test_digits_after_whitespace_match_llama_cpp(model_and_tokenizer, vocab, hf_gguf_tokenizer):
    tok = model_and_tokenizer[1]
    ours = tok.encode(DIGITS_AFTER_SPACE, add_special_tokens=False)
    assert ours == theirs(vocab, DIGITS_AFTER_SPACE)
    # the reason llama.cpp is the reference here: transformers' GGUF tokenizer splits these otherwise
    assert ours != hf_gguf_tokenizer.encode(DIGITS_AFTER_SPACE, add_special_tokens=False)


def test_long_english_text_matches_llama_cpp(model_and_tokenizer, vocab):
    tok = model_and_tokenizer[1]
    text = builtin_text("evaluation")[:60_000]
    assert tok.encode(text, add_special_tokens=False) == theirs(vocab, text)
