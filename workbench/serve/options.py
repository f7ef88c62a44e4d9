"""`workbench serve`'s flags and the `ServerConfig` they make (no heavy imports: the CLI builds its
parser from this on every call)."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidParameterError

API_KEY_ENV = "WORKBENCH_API_KEY"


@dataclass
class ServerConfig:
    model_name: str                 # the name clients send as `model`
    host: str = "127.0.0.1"
    port: int = 8000                # 0: any free port (printed when listening)
    api_key: str | None = None      # None: no authentication
    max_queued_requests: int = 64   # sequences that may wait beyond the running batch; then 429
    max_request_bytes: int = 2**20  # a larger body is answered 413
    engine: dict = field(default_factory=dict)  # EngineConfig settings
    log_level: str = "warning"
    json: bool = False              # announce the address as one JSON line


def add_arguments(p: argparse.ArgumentParser):
    """The server's and the engine's flags (the model flags come from the CLI's common set)."""
    s = p.add_argument_group("server")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    s.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port, printed)")
    s.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="the model name clients send (default: the model name plus its --prune/--quant/--dtype)")
    s.add_argument("--api-key", default=None, metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' on every route but /health and the chat page "
                        f"(default: ${API_KEY_ENV} if set, else no key)")
    s.add_argument("--max-queued-requests", type=int, default=64, metavar="N",
                   help="sequences that may wait beyond the running batch before new requests get 429 (default 64)")
    s.add_argument("--max-request-bytes", type=int, default=2**20, metavar="N",
                   help="largest request body accepted; a larger one gets 413 (default 1048576)")
    s.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default warning; info logs every request)")
    e = p.add_argument_group("engine")
    e.add_argument("--max-num-seqs", type=int, default=16, metavar="N",
                   help="sequences decoded together in one step at most (default 16)")
    e.add_argument("--max-model-len", type=int, default=None, metavar="N",
                   help="prompt + completion tokens per request (default: the model's context, capped by the KV cache)")
    e.add_argument("--block-size", type=int, default=16, metavar="N", help="positions per KV block (default 16)")
    e.add_argument("--kv-cache-mib", type=int, default=256, metavar="MIB",
                   help="memory for the KV cache in MiB (default 256)")
    e.add_argument("--kv-dtype", default="auto", choices=["auto", "int8"],
                   help="KV cache storage (default auto: the model's dtype)")
    e.add_argument("--max-num-batched-tokens", type=int, default=None, metavar="N",
                   help="tokens per engine step at most (default: --max-model-len)")
    e.add_argument("--chunked-prefill", action="store_true",
                   help="split long prompts across steps so decoding sequences keep going")
    e.add_argument("--no-prefix-caching", action="store_true",
                   help="do not share KV blocks between requests with a common prefix")


def served_model_name(args) -> str:
    """`smollm2-135m`, `smollm2-135m+quant=int8`, ... : the model plus every spec that changes its outputs."""
    name = args.model
    if name.endswith(".gguf") or os.sep in name or Path(name).exists():
        name = Path(name).name.removesuffix(".gguf")
    for flag in ("prune", "quant"):
        if getattr(args, flag, None):
            name += f"+{flag}={getattr(args, flag)}"
    if args.dtype != "float32":
        name += f"+{args.dtype}"
    return name


def config_from_args(args) -> ServerConfig:
    for flag in ("max_num_seqs", "block_size", "kv_cache_mib", "max_request_bytes"):
        if getattr(args, flag) < 1:
            raise InvalidParameterError(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    if args.max_queued_requests < 0:
        raise InvalidParameterError(f"--max-queued-requests must be >= 0, got {args.max_queued_requests}")
    if not 0 <= args.port <= 65535:
        raise InvalidParameterError(f"--port must be in [0, 65535], got {args.port}")
    engine = dict(max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len, block_size=args.block_size,
                  kv_cache_bytes=args.kv_cache_mib * 2**20, kv_dtype=args.kv_dtype,
                  max_num_batched_tokens=args.max_num_batched_tokens, chunked_prefill=args.chunked_prefill,
                  enable_prefix_caching=not args.no_prefix_caching, policy="continuous")
    return ServerConfig(model_name=args.served_model_name or served_model_name(args), host=args.host,
                        port=args.port, api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
                        max_queued_requests=args.max_queued_requests, max_request_bytes=args.max_request_bytes,
                        engine=engine, log_level=args.log_level, json=args.json)
