"""`workbench serve` through the official `openai` client (sync, async, streaming) and raw HTTP, against
one server started in a subprocess for the whole module: outputs equal the engine's, usage equals our
tokenizer's counts, requests batch, a client that goes away frees its KV blocks, and every bad input
gets OpenAI's error JSON while the server keeps serving."""

from __future__ import annotations

import asyncio
import re
import time

import pytest
import torch

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from workbench.engine import Engine, EngineConfig, SamplingParams  # noqa: E402
from workbench.serve.process import ServerProcess  # noqa: E402

PROMPT = "The capital of France is"
CHAT = [{"role": "user", "content": "Name three colours."}]


@pytest.fixture(scope="module")
def server():
    # kernels off and one thread: the same arithmetic as the in-process reference engine below
    with ServerProcess("--threads", "1", "--kernels", "off", "--max-num-seqs", "8") as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def reference(model_and_tokenizer):
    """Engine.generate in this process: what the server must answer for a greedy request."""
    model, tokenizer = model_and_tokenizer
    engine = Engine(model, tokenizer, EngineConfig())

    def run(prompt, max_tokens, **kw):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return engine.generate([prompt], SamplingParams(max_tokens=max_tokens, **kw))[0]
        finally:
            torch.set_num_threads(before)
    return run


def metrics(http) -> dict[str, float]:
    """The /metrics samples without labels' order mattering: 'name{labels}' -> value, and 'name' for
    the first series of that name."""
    out = {}
    for line in http.get("/metrics").text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
            out.setdefault(key.split("{")[0], float(value))
    return out


def series(m: dict, name: str, *labels: str) -> float:
    """The value of the series `name` whose labels include each of `labels` ('le="1"', ...)."""
    return next(v for k, v in m.items() if k.split("{")[0] == name and all(label in k for label in labels))


def wait_all_blocks_free(http, timeout_s=20.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        m = metrics(http)
        if m["workbench:kv_cache_blocks_free"] == m["workbench:kv_cache_blocks_total"] \
                and m["workbench:num_requests_running"] == 0 and m["workbench:num_requests_waiting"] == 0:
            return m
        assert time.monotonic() < deadline, f"KV blocks still held: {m}"
        time.sleep(0.05)


# ---- the endpoints ---------------------------------------------------------------------------------
def test_models_health_version(server, client, http):
    models = client.models.list()
    assert [m.id for m in models.data] == ["smollm2-135m"] == [server.model]
    assert client.models.retrieve("smollm2-135m").id == "smollm2-135m"
    assert http.get("/health").status_code == 200
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", http.get("/version").json()["version"])


def test_greedy_completion_equals_engine_generate_and_usage_our_tokenizer(client, reference, model_and_tokenizer):
    tokenizer = model_and_tokenizer[1]
    r = client.completions.create(model="smollm2-135m", prompt=PROMPT, max_tokens=12, temperature=0)
    expected = reference(PROMPT, 12)
    assert r.choices[0].text == expected.text and r.choices[0].text.strip()
    assert r.choices[0].finish_reason == expected.finish_reason == "length"
    assert r.usage.prompt_tokens == len(tokenizer.encode(PROMPT))
    assert r.usage.completion_tokens == len(expected.token_ids) == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_chat_equals_engine_and_streamed_equals_whole(client, reference, model_and_tokenizer):
    tokenizer = model_and_tokenizer[1]
    whole = client.chat.completions.create(model="smollm2-135m", messages=CHAT, max_tokens=16, temperature=0)
    expected = reference(CHAT, 16)
    assert whole.choices[0].message.content == expected.text
    assert whole.choices[0].message.role == "assistant"
    prompt_ids = tokenizer.encode(tokenizer.apply_chat_template(CHAT, add_generation_prompt=True))
    assert whole.usage.prompt_tokens == len(prompt_ids)
    assert whole.usage.completion_tokens == len(expected.token_ids)

    chunks = list(client.chat.completions.create(model="smollm2-135m", messages=CHAT, max_tokens=16, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert reasons == [whole.choices[0].finish_reason]  # once, on the last content chunk
    assert chunks[-1].choices == [] and chunks[-1].usage == whole.usage
    assert all(c.usage is None for c in chunks[:-1])


def test_streamed_completion_equals_whole_and_ends_with_done(client, http):
    whole = client.completions.create(model="smollm2-135m", prompt=PROMPT, max_tokens=10, temperature=0)
    pieces = [c.choices[0].text for c in client.completions.create(
        model="smollm2-135m", prompt=PROMPT, max_tokens=10, temperature=0, stream=True)]
    assert "".join(pieces) == whole.choices[0].text
    raw = http.post("/v1/completions", json={"prompt": PROMPT, "max_tokens": 3, "stream": True}).text
    events = [e for e in raw.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"


def test_prompt_forms_n_echo_and_stop(client, model_and_tokenizer):
    tokenizer = model_and_tokenizer[1]
    ids = tokenizer.encode(PROMPT)
    by_text = client.completions.create(model="smollm2-135m", prompt=PROMPT, max_tokens=6, temperature=0)
    by_ids = client.completions.create(model="smollm2-135m", prompt=ids, max_tokens=6, temperature=0)
    assert by_ids.choices[0].text == by_text.choices[0].text
    batch = client.completions.create(model="smollm2-135m", prompt=[PROMPT, "Once upon a time"], max_tokens=5,
                                      temperature=0.8, seed=1, n=2)
    assert sorted(c.index for c in batch.choices) == [0, 1, 2, 3]
    assert batch.usage.prompt_tokens == len(ids) + len(tokenizer.encode("Once upon a time"))
    assert batch.usage.completion_tokens == 4 * 5
    default = client.completions.create(model="smollm2-135m", prompt=PROMPT, temperature=0,
                                        extra_body={"ignore_eos": True})
    assert default.usage.completion_tokens == 16  # OpenAI's default max_tokens for completions
    echo = client.completions.create(model="smollm2-135m", prompt=PROMPT, max_tokens=6, temperature=0, echo=True)
    assert echo.choices[0].text == PROMPT + by_text.choices[0].text
    full = by_text.choices[0].text
    stop = full.strip().split()[1]  # a word the greedy completion reaches
    stopped = client.completions.create(model="smollm2-135m", prompt=PROMPT, max_tokens=6, temperature=0, stop=[stop])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == full[:full.index(stop)]


def test_sampled_n_choices_streamed_equal_whole_with_a_seed(client):
    kw = dict(model="smollm2-135m", prompt=PROMPT, max_tokens=6, temperature=1.0, top_p=0.9, n=2, seed=7)
    whole = client.completions.create(**kw)
    texts, reasons = {0: "", 1: ""}, {0: [], 1: []}
    for chunk in client.completions.create(**kw, stream=True):
        for c in chunk.choices:
            texts[c.index] += c.text
            reasons[c.index] += [c.finish_reason] if c.finish_reason else []
    assert texts == {c.index: c.text for c in whole.choices}
    assert reasons == {0: ["length"], 1: ["length"]}


def test_logprobs_completions_and_chat(client):
    r = client.completions.create(model="smollm2-135m", prompt=PROMPT, max_tokens=4, temperature=0, logprobs=3)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 4
    assert "".join(lp.tokens) == r.choices[0].text
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert value <= 0 and len(top) == 3 and max(top.values()) == pytest.approx(value)  # greedy: the top one
        assert top[token] == pytest.approx(value)
    c = client.chat.completions.create(model="smollm2-135m", messages=CHAT, max_tokens=3, temperature=0, logprobs=True,
                                       top_logprobs=2)
    content = c.choices[0].logprobs.content
    assert "".join(t.token for t in content) == c.choices[0].message.content
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].logprob == pytest.approx(t.logprob) for t in content)
    assert bytes(content[0].bytes).decode() == content[0].token


def test_tokenize_and_detokenize(http, model_and_tokenizer):
    tokenizer = model_and_tokenizer[1]
    r = http.post("/tokenize", json={"prompt": PROMPT}).json()
    assert r["tokens"] == tokenizer.encode(PROMPT) and r["count"] == len(r["tokens"]) and r["max_model_len"] > 0
    chat = http.post("/tokenize", json={"messages": CHAT}).json()
    assert chat["tokens"] == tokenizer.encode(tokenizer.apply_chat_template(CHAT, add_generation_prompt=True))
    parts = [{"role": "user", "content": [{"type": "text", "text": CHAT[0]["content"]}]}]
    assert http.post("/tokenize", json={"messages": parts}).json() == chat
    assert http.post("/detokenize", json={"tokens": r["tokens"]}).json() == {"prompt": PROMPT}


# ---- concurrency and cancellation ------------------------------------------------------------------
def test_concurrent_streams_are_batched(server, http):
    before = metrics(http)

    async def main():
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)

        async def one(i):
            stream = await client.completions.create(model="smollm2-135m", prompt=f"{PROMPT} {i}", max_tokens=24,
                                                     temperature=0, stream=True, extra_body={"ignore_eos": True})
            return "".join([c.choices[0].text async for c in stream])

        async def watch(done):
            peak = 0
            async with httpx.AsyncClient(base_url=server.url) as h:
                while not done.is_set():
                    text = (await h.get("/metrics")).text
                    peak = max(peak, float(re.search(r"^workbench:num_requests_running\{.*\} (\S+)$", text, re.M)[1]))
                    await asyncio.sleep(0.02)
            return peak

        done = asyncio.Event()
        watcher = asyncio.create_task(watch(done))
        texts = await asyncio.gather(*(one(i) for i in range(4)))
        done.set()
        return texts, await watcher

    texts, peak_running = asyncio.run(main())
    assert all(texts)
    after = metrics(http)
    assert after["workbench:generation_tokens_total"] - before["workbench:generation_tokens_total"] == 4 * 24
    assert peak_running >= 2
    # engine steps that ran more than one sequence: the 4 clients shared forward passes
    batched = lambda m: m["workbench:iteration_batch_size_count"] - series(m, "workbench:iteration_batch_size_bucket",
                                                                           'le="1"')
    assert batched(after) - batched(before) >= 10


def test_cancelled_stream_frees_its_blocks_at_once(server, http):
    tokens_before = wait_all_blocks_free(http)["workbench:generation_tokens_total"]
    body = {"prompt": PROMPT, "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=server.url, timeout=60) as h, h.stream("POST", "/v1/completions", json=body) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]  # a few tokens in: it holds blocks now
        assert all(g.startswith("data: ") or g == "" for g in got)
        assert metrics(http)["workbench:kv_cache_blocks_free"] < metrics(http)["workbench:kv_cache_blocks_total"]
    m = wait_all_blocks_free(http)
    assert 0 < m["workbench:generation_tokens_total"] - tokens_before < 400  # aborted, not run to its end


def test_disconnected_non_streaming_request_is_aborted(server, http):
    wait_all_blocks_free(http)
    tokens_before = metrics(http)["workbench:generation_tokens_total"]
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(server.url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 400, "ignore_eos": True},
                   timeout=httpx.Timeout(60, read=1.0))
    m = wait_all_blocks_free(http)
    assert m["workbench:generation_tokens_total"] - tokens_before < 400


# ---- bad input ---------------------------------------------------------------------------------------
COMPLETION = {"prompt": PROMPT, "max_tokens": 2}
CHAT_BODY = {"messages": CHAT, "max_tokens": 2}
BAD = [  # (route, body, status, param or None, what the message says)
    ("/v1/completions", b'{"prompt": "x", ', 400, None, "not valid JSON"),
    ("/v1/completions", b'{"prompt": "\xff\xfe"}', 400, None, "not valid UTF-8"),
    ("/v1/completions", b'[1, 2]', 400, None, "JSON object"),
    ("/v1/completions", {"max_tokens": 2}, 400, "prompt", "missing"),
    ("/v1/chat/completions", {"max_tokens": 2}, 400, "messages", "missing"),
    ("/v1/completions", {**COMPLETION, "max_tokens": "5"}, 400, "max_tokens", "integer"),
    ("/v1/completions", {**COMPLETION, "temperature": "hot"}, 400, "temperature", "number"),
    ("/v1/completions", {**COMPLETION, "stream": "yes"}, 400, "stream", "boolean"),
    ("/v1/completions", {**COMPLETION, "prompt": ""}, 400, "prompt", "empty"),
    ("/v1/completions", {**COMPLETION, "prompt": []}, 400, "prompt", "must be"),
    ("/v1/completions", {**COMPLETION, "prompt": [1.5]}, 400, "prompt", "must be"),
    ("/v1/completions", {**COMPLETION, "prompt": [10**9]}, 400, None, "token id"),
    ("/v1/chat/completions", {**CHAT_BODY, "messages": []}, 400, "messages", "empty"),
    ("/v1/chat/completions", {**CHAT_BODY, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0]",
     "unknown role"),
    ("/v1/chat/completions", {**CHAT_BODY, "messages": [{"role": "user"}]}, 400, "messages[0].content", "missing"),
    ("/v1/completions", {**COMPLETION, "n": 0}, 400, "n", "greater than or equal to 1"),
    ("/v1/completions", {**COMPLETION, "max_tokens": -3}, 400, "max_tokens", "greater than or equal to 1"),
    ("/v1/completions", {**COMPLETION, "temperature": -0.5}, 400, "temperature", "greater than or equal to 0"),
    ("/v1/completions", {**COMPLETION, "top_p": 0}, 400, "top_p", "greater than 0"),
    ("/v1/completions", {**COMPLETION, "top_p": 1.5}, 400, "top_p", "less than or equal to 1"),
    ("/v1/completions", {**COMPLETION, "logprobs": 21}, 400, "logprobs", "less than or equal to 20"),
    ("/v1/chat/completions", {**CHAT_BODY, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs", "20"),
    ("/v1/chat/completions", {**CHAT_BODY, "top_logprobs": 2}, 400, "top_logprobs", "logprobs"),
    ("/v1/completions", {**COMPLETION, "stream_options": {"include_usage": True}}, 400, "stream_options", "stream"),
    ("/v1/completions", {**COMPLETION, "echo": True, "logprobs": 1}, 400, "logprobs", "not supported"),
    ("/v1/completions", {**COMPLETION, "suffix": "end"}, 400, "suffix", "not supported"),
    ("/v1/completions", {**COMPLETION, "min_tokens": 5}, 400, "min_tokens", "max_tokens"),
    ("/v1/completions", {**COMPLETION, "stop_token_ids": [10**9]}, 400, "stop_token_ids", "vocabulary"),
    ("/v1/chat/completions", {**CHAT_BODY, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
     400, "messages[0].content", "text parts"),
    ("/v1/completions", {**COMPLETION, "logit_bias": {"x": 1}}, 400, "logit_bias", "logit_bias"),
    ("/v1/completions", {**COMPLETION, "logit_bias": {"5": 300}}, 400, "logit_bias", "[-100, 100]"),
    ("/v1/completions", {**COMPLETION, "max_tokens": 100_000}, 400, "prompt", "maximum context length"),
    ("/v1/chat/completions", {**CHAT_BODY, "max_completion_tokens": 100_000}, 400, "messages", "maximum context"),
    ("/v1/completions", {**COMPLETION, "model": "gpt-4"}, 404, "model", "smollm2-135m"),
    ("/v1/completions", {**COMPLETION, "prompt": "x" * (2**20 + 10)}, 413, None, "at most"),
    ("/v1/nowhere", {}, 404, None, "no route"),
]


@pytest.mark.parametrize("route, body, status, param, says", BAD, ids=[f"{i}-{b[4]}" for i, b in enumerate(BAD)])
def test_bad_input_gets_openai_error_json(http, route, body, status, param, says):
    r = http.post(route, content=body) if isinstance(body, bytes) else http.post(route, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert says in error["message"], error
    assert error["param"] == param
    if "maximum context" in says:
        assert error["code"] == "context_length_exceeded"


def test_bad_input_through_the_client_and_unknown_fields_ignored(client):
    with pytest.raises(openai.NotFoundError, match="smollm2-135m"):
        client.completions.create(model="gpt-4", prompt=PROMPT, max_tokens=2)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="smollm2-135m", messages=CHAT, max_tokens=10**6)
    assert e.value.code == "context_length_exceeded"
    # unknown fields are ignored (as vLLM does), and the server still serves
    r = client.completions.create(model="smollm2-135m", prompt=PROMPT, max_tokens=2, temperature=0,
                                  extra_body={"no_such_field": [1, 2], "best_of_luck": True})
    assert r.choices[0].finish_reason == "length"


def test_an_error_after_the_stream_started_is_sent_in_band():
    from workbench.errors import RequestFailedError
    from workbench.serve.respond import events
    from workbench.serve.protocol import CompletionRequest
    from workbench.serve.responses import CompletionResponse

    class FailingAfterOne:  # a generation whose engine fails after its first output
        async def outputs(self):
            from types import SimpleNamespace
            yield 0, SimpleNamespace(index=0, token_ids=[1], delta_text="a", finished=False, finish_reason=None,
                                     new_logprobs=None, text="a")
            raise RequestFailedError("request 7 failed: NaN logits")

    class Tok:
        def decode(self, ids):
            return "a"

    req = CompletionRequest.model_validate({"prompt": "x", "stream": True})

    async def collect():
        return [e async for e in events(req, FailingAfterOne(), CompletionResponse("m", Tok(), [[1]], 1, None, True))]

    sent = asyncio.run(collect())
    assert '"text": "a"' in sent[0]
    assert sent[1].startswith('data: {"error": {"message": "request 7 failed: NaN logits"')
    assert sent[-1] == "data: [DONE]\n\n"
