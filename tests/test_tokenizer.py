"""Our tokenizer (built natively from the GGUF vocabulary) against transformers' GGUF tokenizer, on texts
where the two agree; llama.cpp's tokenizer is the authoritative reference (see test_tokenizer_llama_cpp.py)."""

from __future__ import annotations

import pytest

from workbench.tokenizer import Tokenizer

TEXTS = {
    "prose": "The quick brown fox jumps over the lazy dog. It's a truth universally acknowledged, isn't it? "
             "They'll say we'd've known; I'm sure YOU'RE right.",
    "python": "def fib(n):\n    if n < 2:\n        return n\n\treturn fib(n - 1) + fib(n - 2)  # tab-indented\n\n"
              "class A:\n    x: int = 0\n",
    "chinese": "机器学习是人工智能的一个分支。你好，世界！",
    "emoji": "Emoji: 🤗🚀👍🏽 ❤️ 👨‍👩‍👧",
    "whitespace": "a  b   c\t\td\n\n\ne \n \n  \r\n\t \u00a0end   ",
    "numbers": "In 2024, pi is 3.14159; 1,000,000 and -42 and 0x1F and 12345678901234567890",
    "special_tokens": "<|im_start|>user\nhi<|im_end|>",
    "special_tokens_glued": "<|endoftext|>x<|im_end|><|im_start|>assistant\n<|im_end|>",
    "accents": "héllo wörld ñ café naïve Ångström",
    "leading_trailing": " leading and trailing spaces ",
    "empty": "",
    "only_spaces": "    ",
}


@pytest.fixture(scope="module", params=["load_model", "from_gguf"])
def tokenizer(request):
    """What users get (`load_model`, read back from the weight cache) and one built from the GGUF
    now: the cache is keyed on the file alone, so it may hold a tokenizer an older version built."""
    if request.param == "load_model":
        return request.getfixturevalue("model_and_tokenizer")[1]
    return Tokenizer.from_gguf(request.getfixturevalue("bundled_checkpoint"))


@pytest.mark.parametrize("name", list(TEXTS))
def test_ids_match_transformers(tokenizer, hf_gguf_tokenizer, name):
    text = TEXTS[name]
    ours = tokenizer.encode(text, add_special_tokens=False)
    assert ours == hf_gguf_tokenizer.encode(text, add_special_tokens=False)
    assert (text == "") == (ours == [])


@pytest.mark.parametrize("name", list(TEXTS))
def test_decode_round_trip(tokenizer, hf_gguf_tokenizer, name):
    text = TEXTS[name]
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == hf_gguf_tokenizer.decode(ids, skip_special_tokens=True)


def test_special_tokens_are_single_ids(tokenizer, hf_gguf_tokenizer):
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        ids = tokenizer.encode(token, add_special_tokens=False)
        assert ids == [hf_gguf_tokenizer.convert_tokens_to_ids(token)]
    assert tokenizer.encode("<|im_start|>user\nhi<|im_end|>", add_special_tokens=False)[0] == tokenizer.token_to_id(
        "<|im_start|>")


def test_add_special_tokens_matches_transformers(tokenizer, hf_gguf_tokenizer):
    text = TEXTS["prose"]
    assert tokenizer.encode(text) == hf_gguf_tokenizer.encode(text)  # SmolLM2 adds no BOS
    assert tokenizer.bos_token == hf_gguf_tokenizer.bos_token
    assert tokenizer.eos_token == hf_gguf_tokenizer.eos_token
    assert tokenizer.vocab_size == len(hf_gguf_tokenizer) == 49152


CONVERSATIONS = {
    "system_user_assistant": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "4."},
    ],
    "user_only": [{"role": "user", "content": "Write a haiku about tokenizers.\nPlease."}],
}


@pytest.mark.parametrize("name", list(CONVERSATIONS))
def test_chat_template_matches_transformers(tokenizer, hf_gguf_tokenizer, name):
    messages = CONVERSATIONS[name]
    ours = tokenizer.apply_chat_template(messages)
    assert ours == hf_gguf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert ours.endswith("<|im_start|>assistant\n")
    if name == "user_only":  # SmolLM2's template supplies a default system prompt
        assert ours.startswith("<|im_start|>system\n")
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=False) == \
        hf_gguf_tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)


@pytest.fixture(scope="module")
def saved_tokenizer_dir(tokenizer, tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save(path)
    return path


def test_save_and_reload_gives_identical_ids(tokenizer, saved_tokenizer_dir):
    assert (saved_tokenizer_dir / "tokenizer.json").is_file()
    again = Tokenizer.from_dir(saved_tokenizer_dir)
    for text in TEXTS.values():
        assert again.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
    assert (again.bos_token, again.eos_token, again.pad_token) == \
        (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token)
    assert again.chat_template == tokenizer.chat_template
    assert again.stop_token_ids == tokenizer.stop_token_ids


def test_saved_dir_loads_in_transformers(tokenizer, saved_tokenizer_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(saved_tokenizer_dir))
    for text in TEXTS.values():
        assert hf.encode(text, add_special_tokens=False) == tokenizer.encode(text, add_special_tokens=False)
    messages = CONVERSATIONS["system_user_assistant"]
    assert hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        tokenizer.apply_chat_template(messages)
    assert hf.eos_token == tokenizer.eos_token


def test_stop_token_ids(tokenizer, hf_gguf_tokenizer):
    im_end = hf_gguf_tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert im_end == tokenizer.token_to_id("<|im_end|>")
    assert im_end in tokenizer.stop_token_ids
    assert tokenizer.eos_token_id in tokenizer.stop_token_ids
    assert tokenizer.token_to_id("<|im_start|>") not in tokenizer.stop_token_ids
