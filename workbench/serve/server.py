"""`workbench serve`: one process, uvicorn on the event loop, the engine loop in its own thread.

The socket is bound before the model loads, so /health can answer 503 while it does; the address is
printed on stdout (one line, or one JSON object with --json) once the socket is listening.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from typing import Callable

import uvicorn

from .app import build_app
from .options import ServerConfig
from .state import ServerState


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        from ..errors import InvalidParameterError

        sock.close()
        raise InvalidParameterError(f"cannot listen on {host}:{port}: {e.strerror}") from None
    sock.listen(2048)
    return sock


def serve(config: ServerConfig, load: Callable[[], tuple]) -> int:
    """Serve until interrupted; `load()` returns (model, tokenizer). A model that fails to load ends
    the server with that error (raised, so the CLI prints it as one line)."""
    sock = _listen(config.host, config.port)
    host, port = sock.getsockname()[:2]
    state = ServerState(config, load)
    server = uvicorn.Server(uvicorn.Config(build_app(state), log_level=config.log_level,
                                           access_log=config.log_level in ("info", "debug"),
                                           timeout_graceful_shutdown=5))

    def stop_if_load_failed():
        state.loaded.wait()
        if state.load_error is not None:
            server.should_exit = True
        else:
            print(f"workbench serve: {config.model_name} ready (context {state.max_model_len} tokens)",
                  file=sys.stderr, flush=True)

    threading.Thread(target=stop_if_load_failed, daemon=True).start()
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}"
    print(json.dumps({"url": url, "model": config.model_name}) if config.json
          else f"workbench serve: {config.model_name} at {url} (loading the model)", flush=True)
    server.run(sockets=[sock])
    if state.load_error is not None:
        raise state.load_error
    return 0
