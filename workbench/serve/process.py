"""`workbench serve` as a child process, for notebooks, benchmarks and tests:

    with ServerProcess("--model", "smollm2-135m", "--quant", "int8") as server:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="none")

It listens on a free loopback port, is ready when entered (its /health answers 200), and is stopped
on exit, also when the body raises. A server that dies while starting raises with its stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from ..errors import WorkbenchError

_MAIN = "import sys; from workbench.cli import main; sys.exit(main(sys.argv[1:]))"


class ServerStartError(WorkbenchError):
    """The server exited or did not become ready in time."""


class ServerProcess:
    def __init__(self, *flags: str, timeout_s: float = 180.0, env: dict | None = None):
        self.flags, self.timeout_s = list(flags), timeout_s
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.url = self.model = None
        self.health_seen: list[int | None] = []  # the distinct /health answers while starting, in order

    def start(self) -> "ServerProcess":
        self._stderr = tempfile.TemporaryFile(mode="w+")
        cmd = [sys.executable, "-c", _MAIN, "serve", "--host", "127.0.0.1", "--port", "0", "--json", *self.flags]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self._stderr, text=True, env=self.env)
        line = self.proc.stdout.readline()  # the address, once the socket listens
        if not line:
            self._fail("exited before listening")
        announced = json.loads(line)
        self.url, self.model = announced["url"], announced["model"]
        deadline = time.monotonic() + self.timeout_s
        while (status := self.health()) != 200:
            if not self.health_seen or self.health_seen[-1] != status:
                self.health_seen.append(status)
            if self.proc.poll() is not None:
                self._fail(f"exited with status {self.proc.returncode} while loading")
            if time.monotonic() > deadline:
                self._fail(f"not ready after {self.timeout_s:.0f} s")
            time.sleep(0.1)
        self.health_seen.append(200)
        return self

    def health(self) -> int | None:
        """The status /health answers, None when nothing answers."""
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def _fail(self, what: str):
        self.stop()
        raise ServerStartError(f"workbench serve {' '.join(self.flags)} {what}: {self.stderr()[-2000:]}")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None:
            self.proc.stdout.close()

    def __enter__(self) -> "ServerProcess":
        return self.start()

    def __exit__(self, *exc):
        self.stop()
