"""Streamed text on the real tokenizer: whole UTF-8 characters only, stop strings never leaked (not even
a prefix that later becomes one), incremental detokenization linear in the output length."""

from __future__ import annotations

import pytest

from workbench import load_model
from workbench.engine import Engine, EngineConfig, SamplingParams, generate
from workbench.engine.detokenizer import Detokenizer

REPLACEMENT = "\ufffd"


@pytest.fixture(scope="module")
def scripted():
    """A small random model with the bundled (real) tokenizer: its logits are overridden by a script,
    so only the tokenizer and the engine's text path matter."""
    return load_model("tiny-random")


class Scripted:
    """The real model, with each request's next tokens forced: the logits of request `rid` put all
    mass on `scripts[rid][k]` at its k-th output token (the forward pass itself still runs)."""

    def __init__(self, model, engine_ref, scripts: dict[str, list[int]]):
        self._model, self._engine, self._scripts = model, engine_ref, scripts
        self._done = {rid: 0 for rid in scripts}

    def __getattr__(self, name):
        return getattr(self._model, name)

    def __call__(self, *args, **kwargs):
        logits = self._model(*args, **kwargs)
        for row, (rid, _) in enumerate(self._engine[0].last_schedule):
            script, k = self._scripts[rid], self._done[rid]
            logits[row] = -1e4
            logits[row, ..., script[min(k, len(script) - 1)]] = 0.0
            self._done[rid] += 1
        return logits


def scripted_engine(model, tok, scripts):
    ref = []
    engine = Engine(Scripted(model, ref, scripts), tok, EngineConfig(block_size=8, num_blocks=64))
    ref.append(engine)
    return engine


def stream_script(model, tok, text, **params):
    """Stream `text`'s tokens as if the model generated them; the deltas and the final output."""
    ids = tok.encode(text)
    engine = scripted_engine(model, tok, {"0": ids})
    outs = list(engine.stream("Say it:", SamplingParams(max_tokens=len(ids), **params)))
    return ids, [o.delta_text for o in outs], outs[-1]


def test_emoji_and_cjk_stream_as_whole_characters(scripted):
    model, tok = scripted
    text = "Hi 👋🏽 你好，世界！ 🎉 café ✓ 𝄞 done"
    ids, deltas, last = stream_script(model, tok, text)
    assert sum(REPLACEMENT in tok.decode([i]) for i in ids) >= 4  # the tokens do split characters
    assert all(REPLACEMENT not in d for d in deltas)
    assert "".join(deltas) == last.text == text and last.finish_reason == "length"
    assert any(d == "" for d in deltas)  # a token ending inside a character shows nothing yet


def test_a_stop_string_split_across_tokens_is_never_emitted(scripted):
    model, tok = scripted
    text = "Once upon a time there was a wizard."
    ids = tok.encode(text)
    pieces = [tok.decode([i]) for i in ids]
    assert " time" in pieces and " there" in pieces  # "ime the" starts in one token and ends in the next
    _, deltas, last = stream_script(model, tok, text, stop=["ime the"])
    shown = ""
    for d in deltas:
        shown += d
        assert "Once upon a t".startswith(shown)  # never "ime", never a prefix of it that came true
    assert shown == last.text == "Once upon a t" and last.finish_reason == "stop" and last.stop_reason == "ime the"

    _, deltas, last = stream_script(model, tok, text, stop=["ime the"], include_stop_str_in_output=True)
    assert "".join(deltas) == last.text == "Once upon a time the"

    _, deltas, last = stream_script(model, tok, text, stop=["ime machine"])  # a false alarm is released
    assert "".join(deltas) == last.text == text and last.finish_reason == "length"


def test_min_tokens_ignores_an_early_stop_string_and_stop_token(scripted):
    model, tok = scripted
    text = "one. two. three. four. five."
    ids, deltas, last = stream_script(model, tok, text, stop=["."], min_tokens=3)
    assert len(tok.encode("one.")) < 3 <= len(tok.encode("one. two."))
    assert last.text == "one. two"  # the first "." came too early
    assert "".join(deltas) == last.text
    eos = tok.eos_token_id
    engine = scripted_engine(model, tok, {"0": [ids[0], eos, ids[1], ids[2], eos]})
    (out,) = engine.generate(["Go:"], SamplingParams(max_tokens=8, min_tokens=3))
    # the first EOS came before min_tokens: masked, so the best other token was taken instead
    assert out.finish_reason == "stop" and len(out.token_ids) == 4 and out.token_ids[1] not in tok.stop_token_ids
    assert [out.token_ids[0]] + out.token_ids[2:] == ids[:3]
    engine = scripted_engine(model, tok, {"0": ids})
    (out,) = engine.generate(["Go:"], SamplingParams(max_tokens=8, stop_token_ids=[ids[2]]))
    assert out.finish_reason == "stop" and out.stop_reason == ids[2] and out.token_ids == ids[:2]


def test_stop_string_from_the_models_own_output(model_and_tokenizer):
    model, tok = model_and_tokenizer
    prompt = "The three primary colours are"
    free = generate(model, tok, prompt, SamplingParams(max_tokens=24, ignore_eos=True))
    pieces = [tok.decode([i]) for i in free.token_ids]
    # a stop string spanning a token boundary: the end of one multi-character token + the start of the next
    i = next(i for i in range(3, len(pieces) - 1) if len(pieces[i].strip()) >= 2 and len(pieces[i + 1].strip()) >= 2)
    stop = pieces[i][-2:] + pieces[i + 1][:2]
    cut = free.text.find(stop)
    engine = Engine(model, tok, EngineConfig(block_size=8, num_blocks=64))
    outs = list(engine.stream(prompt, SamplingParams(max_tokens=24, ignore_eos=True, stop=[stop])))
    shown = ""
    for o in outs:
        shown += o.delta_text
        assert free.text[:cut].startswith(shown)
    assert shown == outs[-1].text == free.text[:cut] and outs[-1].finish_reason == "stop"


class CountingTokenizer:
    def __init__(self, tok):
        self.tok, self.calls, self.ids_decoded = tok, 0, 0

    def decode(self, ids, **kw):
        self.calls += 1
        self.ids_decoded += len(ids)
        return self.tok.decode(ids, **kw)


@pytest.mark.parametrize("length", [100, 400])
def test_detokenization_is_linear_in_the_output(model_and_tokenizer, length):
    _, tok = model_and_tokenizer
    text = ("Streaming text, token by token: 你好 🎉 " * 200)
    ids = tok.encode(text)[:length]
    counting = CountingTokenizer(tok)
    d = Detokenizer(counting, stop=["STOP"])
    chunks = []
    for t in ids:
        d.add(t)
        chunks.append(d.ready())
    d.finish()
    chunks.append(d.ready())
    assert "".join(chunks) == d.text == tok.decode(ids, skip_special_tokens=True)
    assert counting.calls <= 2 * length + 2
    assert counting.ids_decoded <= 12 * length  # a short window per token, not the whole output

    counting = CountingTokenizer(tok)  # a run of special tokens (no text) keeps the window short too
    d = Detokenizer(counting)
    for t in [ids[0]] + [tok.eos_token_id] * length + ids[1:5]:
        d.add(t)
    assert d.text == tok.decode(ids[:5], skip_special_tokens=True)
    assert counting.ids_decoded <= 12 * (length + 5)
