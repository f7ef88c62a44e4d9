"""The model under test: a variant spec, a `workbench serve` child process for it, or the address of
a running server; and the server's /metrics counters. Everything goes over HTTP."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass

from ..errors import InvalidParameterError, WorkbenchError
from .offline import OFFLINE_ENV

DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


class ServerUnreachableError(WorkbenchError):
    """No server answers at the address, or the one started for a variant did not come up."""


@dataclass(frozen=True)
class Variant:
    """One model a researcher compares: `workbench serve`'s --model --quant --prune --dtype --calib."""
    model: str = "smollm2-135m"
    quant: str | None = None
    prune: str | None = None
    dtype: str = "float32"
    calib: str | None = None  # calibration set of a calibrated quant/prune (None: the built-in one)

    @classmethod
    def parse(cls, spec: str, model: str = "smollm2-135m", calib: str | None = None) -> "Variant":
        """`fp32`, `bf16`, `quant=int8`, `quant=int4-g128,dtype=bfloat16`, `prune=wanda:0.5`, `model=DIR`,
        `quant=int4-g128-gptq,calib=licenses:2048` (a calibration set holds no comma)."""
        fields = {"model": model, "calib": calib}  # defaults (the command line's --model, --calib)
        short = {v: k for k, v in DTYPES.items()}
        for part in filter(None, (p.strip() for p in spec.split(","))):
            if part in short or part in DTYPES:
                fields["dtype"] = short.get(part, part)
                continue
            key, eq, value = part.partition("=")
            if not eq or key not in ("model", "quant", "prune", "dtype", "calib") or not value:
                raise InvalidParameterError(f"unknown variant spec {spec!r}: expected fp32, bf16, fp16 or "
                                            f"comma-separated model=, quant=, prune=, dtype=, calib= (got {part!r})")
            fields[key] = short.get(value, value) if key == "dtype" else value
        return cls(**fields).checked()

    def checked(self) -> "Variant":
        """Fail here, in one line, on a spec the server would reject only after loading the model."""
        if self.dtype not in DTYPES:
            raise InvalidParameterError(f"unknown dtype {self.dtype!r} (known: {', '.join(DTYPES)})")
        if self.quant is not None:
            from ..quant import SPECS

            if self.quant not in SPECS:
                raise InvalidParameterError(f"unknown quant spec {self.quant!r} (known: {', '.join(SPECS)})")
        if self.prune is not None:
            from ..prune.api import parse_spec

            parse_spec(self.prune)
        if self.calib is not None:
            from ..corpus import parse_calibration

            parse_calibration(self.calib)
        if self.model != "tiny-random":
            from ..checkpoints import resolve

            resolve(self.model)
        return self

    @property
    def label(self) -> str:
        """Short name for tables and plots: fp32, bf16, int8, int4-g128+bf16, wanda:0.5 ..."""
        parts = [p for p in (self.prune, self.quant) if p]
        if self.dtype != "float32" or not parts:
            parts.append(DTYPES[self.dtype])
        name = "+".join(parts) + (f"@{self.calib}" if self.calib else "")
        return name if self.model == "smollm2-135m" else f"{os.path.basename(self.model.rstrip('/'))}:{name}"

    def flags(self) -> list[str]:
        out = ["--model", self.model, "--dtype", self.dtype]
        out += ["--quant", self.quant] if self.quant else []
        out += ["--prune", self.prune] if self.prune else []
        out += ["--calib", self.calib] if self.calib else []
        return out


@dataclass
class Server:
    url: str                       # http://host:port (no /v1)
    model: str                     # the name clients send
    variant: Variant | None = None
    api_key: str | None = None
    proc: subprocess.Popen | None = None
    kind: str = "workbench"        # or a peer's name

    @property
    def label(self) -> str:
        return self.variant.label if self.variant else self.model


def _get(url: str, api_key: str | None = None, timeout: float = 5.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def connect(url: str, api_key: str | None = None, model: str | None = None) -> Server:
    """A running OpenAI-compatible server at `url` (with or without /v1); its model from /v1/models."""
    base = url.rstrip("/").removesuffix("/v1")
    try:
        status, body = _get(base + "/v1/models", api_key)
    except (OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise ServerUnreachableError(f"no server answers at {base}: {reason}") from None
    if status != 200:
        raise ServerUnreachableError(f"{base}/v1/models answered HTTP {status}: {body[:200].decode(errors='replace')}")
    names = [m["id"] for m in json.loads(body).get("data", [])]
    if model is not None and model not in names:
        raise ServerUnreachableError(f"{base} serves {', '.join(names) or 'no model'}, not {model!r}")
    if not names and model is None:
        raise ServerUnreachableError(f"{base}/v1/models lists no model")
    return Server(url=base, model=model or names[0], api_key=api_key)


def _serve_command(variant: Variant, port: int, extra: list[str]) -> list[str]:
    main = "import sys; from workbench.cli import main; sys.exit(main(sys.argv[1:]))"
    return [sys.executable, "-c", main, "serve", "--host", "127.0.0.1", "--port", str(port), "--json",
            *variant.flags(), *extra]


@contextmanager
def served(variant: Variant, port: int = 0, server_args: tuple[str, ...] = (), timeout_s: float = 600.0):
    """`workbench serve` for `variant` as a child process (offline), ready when entered, stopped on exit."""
    variant = variant.checked()
    err = tempfile.TemporaryFile(mode="w+")
    proc = subprocess.Popen(_serve_command(variant, port, list(server_args)), stdout=subprocess.PIPE, stderr=err,
                            text=True, env={**os.environ, **OFFLINE_ENV})

    def fail(what):
        _stop(proc)
        err.seek(0)
        lines = [ln for ln in err.read().strip().splitlines() if ln.strip()]
        raise ServerUnreachableError(f"workbench serve {' '.join(variant.flags())} {what}"
                                     + (f": {lines[-1]}" if lines else ""))

    try:
        line = proc.stdout.readline()
        if not line:
            fail(f"exited with status {proc.wait()} before listening")
        announced = json.loads(line)
        server = Server(url=announced["url"], model=announced["model"], variant=variant, proc=proc)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if _get(server.url + "/health")[0] == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None:
                fail(f"exited with status {proc.returncode} while loading")
            if time.monotonic() > deadline:
                fail(f"not ready after {timeout_s:.0f} s")
            time.sleep(0.2)
        yield server
    finally:
        _stop(proc)
        err.close()


def _stop(proc: subprocess.Popen):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()


def scrape_metrics(server: Server) -> dict[str, float]:
    """/metrics (Prometheus text) as {series name: value summed over its labels}; {} where there is none."""
    try:
        status, body = _get(server.url + "/metrics", server.api_key)
    except OSError as e:
        raise ServerUnreachableError(f"{server.url}/metrics: {getattr(e, 'reason', e)}") from None
    if status != 200:
        return {}
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out
