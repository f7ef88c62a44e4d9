"""`workbench serve`'s limits, on a server of its own: /health says 503 while the model loads, an API
key guards every route but /health and the chat page, a full queue answers 429, a body over the bound
413, and the server keeps serving after each."""

from __future__ import annotations

import time

import pytest

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from workbench.serve.process import ServerProcess  # noqa: E402

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def server():
    # the key from the environment; one running sequence and one queued: the third concurrent one gets 429
    with ServerProcess("--threads", "1", "--kernels", "off", "--max-num-seqs", "1", "--max-queued-requests", "1",
                       "--max-request-bytes", "4096", env={"WORKBENCH_API_KEY": KEY}) as s:
        yield s


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=60)


def kv_free(server) -> bool:
    text = httpx.get(server.url + "/metrics", headers=AUTH).text
    values = {line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith("workbench:kv_cache_blocks")}
    return values["workbench:kv_cache_blocks_free"] == values["workbench:kv_cache_blocks_total"]


def test_health_is_503_while_loading_then_200(server):
    assert server.health_seen[-1] == 200
    assert 503 in server.health_seen, server.health_seen


@pytest.mark.parametrize("method, route", [("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/version"),
                                           ("POST", "/v1/completions"), ("POST", "/v1/chat/completions"),
                                           ("POST", "/tokenize"), ("POST", "/detokenize")])
@pytest.mark.parametrize("auth", [None, "Bearer wrong-key", f"Basic {KEY}", f"Bearer {KEY}x"])
def test_every_route_needs_the_key(server, method, route, auth):
    r = httpx.request(method, server.url + route, json={"prompt": "hi", "max_tokens": 1},
                      headers={"Authorization": auth} if auth else {})
    assert r.status_code == 401, r.text
    assert r.json()["error"]["code"] == "invalid_api_key"


def test_health_and_chat_page_are_open_and_the_key_works(server, client):
    assert httpx.get(server.url + "/health").status_code == 200
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "/v1/chat/completions" in page.text
    assert client.completions.create(model=server.model, prompt="Hi", max_tokens=2).usage.completion_tokens == 2
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).models.list()


def test_a_full_queue_answers_429_and_the_server_keeps_serving(server, client):
    body = {"prompt": "Once upon a time", "max_tokens": 300, "ignore_eos": True, "stream": True}
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as h:
        with h.stream("POST", "/v1/completions", json=body) as running, \
                h.stream("POST", "/v1/completions", json=body) as queued:
            assert running.status_code == queued.status_code == 200
            lines = running.iter_lines()  # kept: a dropped iterator closes its connection
            assert next(lines).startswith("data: ")  # the first is decoding, the second waits behind it
            with pytest.raises(openai.RateLimitError) as e:
                client.completions.create(model=server.model, prompt="Hi", max_tokens=2)
            assert e.value.status_code == 429 and e.value.code == "queue_full"
            r = h.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
            assert r.status_code == 429 and r.json()["error"]["type"] == "rate_limit_error"
    deadline = time.monotonic() + 20  # both closed: aborted, their blocks back
    while not kv_free(server):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert client.completions.create(model=server.model, prompt="Hi", max_tokens=2).choices[0].text


def test_more_choices_than_the_server_holds_is_a_400(client, server):
    with pytest.raises(openai.BadRequestError, match="sequences") as e:
        client.completions.create(model=server.model, prompt="Hi", max_tokens=2, n=3)
    assert e.value.param == "n"


def test_a_body_over_the_bound_gets_413(server, client):
    r = httpx.post(server.url + "/v1/completions", headers=AUTH, json={"prompt": "x" * 5000, "max_tokens": 1})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    r = httpx.post(server.url + "/v1/completions", headers={**AUTH, "Content-Type": "application/json"},
                   content=(b'{"prompt": "' + b"y" * 5000 + b'"}' for _ in range(1)))  # chunked: no length given
    assert r.status_code == 413
    assert client.completions.create(model=server.model, prompt="Hi", max_tokens=1).usage.completion_tokens == 1


@pytest.mark.parametrize("flags, says", [
    (["--model", "no-such-model"], "unknown model"),   # found while loading, after the socket listened
    (["--max-queued-requests", "-1"], "--max-queued-requests"),
    (["--port", "BUSY"], "cannot listen"),
])
def test_bad_serve_flags_are_one_line_and_exit_2(flags, says):
    import socket
    import subprocess
    import sys

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        flags = [str(busy.getsockname()[1]) if f == "BUSY" else f for f in flags]
        if "--port" not in flags:
            flags += ["--port", "0"]
        p = subprocess.run([sys.executable, "-c", "import sys; from workbench.cli import main; sys.exit(main(sys.argv[1:]))",
                            "serve", "--kernels", "off", *flags], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert p.stderr.startswith("workbench: error:") and says in p.stderr and p.stderr.count("\n") == 1, p.stderr


def test_served_model_name_names_every_spec_that_changes_outputs(tmp_path):
    from argparse import Namespace

    from workbench.serve.options import served_model_name

    def name(model="smollm2-135m", quant=None, prune=None, dtype="float32"):
        return served_model_name(Namespace(model=model, quant=quant, prune=prune, dtype=dtype))

    assert name() == "smollm2-135m"
    assert name(quant="int8") == "smollm2-135m+quant=int8"
    assert name(quant="int4-g32", prune="2:4", dtype="bfloat16") == "smollm2-135m+prune=2:4+quant=int4-g32+bfloat16"
    assert name(model=str(tmp_path / "my-model.gguf")) == "my-model"
