"""The chat page at `/` in a real headless browser (Chromium over the DevTools protocol): it loads with
no network but the server, streams a reply that equals the server's own answer, and shows tokens/s
while it streams. Skipped where no Chromium is installed (Debian: apt-get install chromium)."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

BROWSER = next((shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None)
if BROWSER is None:
    pytest.skip("no Chromium installed (Debian: apt-get install -y chromium)", allow_module_level=True)
websocket = pytest.importorskip("websocket", reason="websocket-client drives the browser")
httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")

from workbench.serve.process import ServerProcess  # noqa: E402

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
         "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1"]


class Browser:
    """Chromium with a fresh profile, one page, driven by DevTools protocol commands."""

    def __init__(self):
        self.profile = tempfile.mkdtemp(prefix="workbench-chromium-")
        self.proc = subprocess.Popen([BROWSER, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().count("\n") >= 1):
            assert self.proc.poll() is None and time.monotonic() < deadline, "Chromium did not start"
            time.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        pages = [t for t in httpx.get(f"http://127.0.0.1:{port}/json/list").json() if t["type"] == "page"]
        self.ws = websocket.create_connection(pages[0]["webSocketDebuggerUrl"], suppress_origin=True, timeout=30)
        self.ids = 0
        self.errors: list[str] = []
        self.command("Runtime.enable")

    def command(self, method: str, **params):
        self.ids += 1
        self.ws.send(json.dumps({"id": self.ids, "method": method, "params": params}))
        while True:
            message = json.loads(self.ws.recv())
            if message.get("method") == "Runtime.exceptionThrown":
                self.errors.append(message["params"]["exceptionDetails"]["text"])
            if message.get("id") == self.ids:
                assert "error" not in message, message
                return message["result"]

    def eval(self, expression: str):
        result = self.command("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    def close(self):
        self.ws.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.profile, ignore_errors=True)


@pytest.fixture(scope="module")
def server():
    with ServerProcess("--threads", "1", "--kernels", "off", "--max-num-seqs", "4") as s:
        yield s


@pytest.fixture
def browser():
    b = Browser()
    yield b
    b.close()


def test_chat_page_streams_a_reply_and_shows_tokens_per_second(server, browser):
    message, max_tokens = "Name three colours.", 24
    expected = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "messages": [{"role": "user", "content": message}], "max_tokens": max_tokens, "temperature": 0}).json()
    browser.command("Page.navigate", url=server.url + "/")
    deadline = time.monotonic() + 30
    while browser.eval("document.getElementById('model') && document.getElementById('model').textContent") != server.model:
        assert time.monotonic() < deadline, "the page did not show the model name"
        time.sleep(0.05)
    browser.eval(f"""document.getElementById('max-tokens').value = {max_tokens};
                     document.getElementById('temperature').value = 0;
                     document.getElementById('prompt').value = {json.dumps(message)};
                     document.getElementById('send').click();""")
    partial, deadline = [], time.monotonic() + 60
    while True:
        state, reply, stats = browser.eval("""[document.body.dataset.state,
            (document.querySelector('.assistant') || {}).textContent || '',
            document.getElementById('stats').textContent]""")
        if state == "streaming" and reply:
            partial.append((reply, stats))
        if state != "streaming" and reply:
            break
        assert state != "error", browser.eval("document.querySelector('.error').textContent")
        assert time.monotonic() < deadline, "no reply"
        time.sleep(0.01)
    assert state == "idle"
    assert reply == expected["choices"][0]["message"]["content"]
    tokens = expected["usage"]["completion_tokens"]
    assert stats.startswith(f"{tokens} tokens · TTFT ") and stats.endswith(" tokens/s")
    # it streamed: shorter replies were on the page before the whole one, with their own speed shown
    assert any(len(text) < len(reply) and "tokens/s" in s for text, s in partial)
    assert browser.errors == []
