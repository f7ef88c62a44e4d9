"""The routes: OpenAI's completions, chat completions and models, plus health, version, tokenize,
detokenize, metrics and the chat page. Every error leaves as OpenAI's error JSON."""

from __future__ import annotations

import hmac
import importlib.metadata
import threading
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .errors import APIError, error_body
from .generation import Generation
from .metrics import CONTENT_TYPE
from .protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest, parse
from .respond import respond
from .responses import ChatResponse, CompletionResponse
from .state import ServerState

DRAIN_FACTOR = 64  # an oversized body is read (and dropped) up to this many times the bound


def build_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=state.load, name="workbench-load", daemon=True).start()
        yield
        state.shutdown()

    app = FastAPI(title="workbench", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return e.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        message = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return JSONResponse(error_body(e.status_code, message), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def unexpected(request, e: Exception):
        return JSONResponse(error_body(500, f"internal error: {type(e).__name__}: {e}"), status_code=500)

    async def authorize(request: Request):
        key = state.config.api_key
        if key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken does not depend on how much of the key matched
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), key.encode()):
            raise APIError(401, "missing or incorrect API key (send 'Authorization: Bearer KEY')", None,
                           "invalid_api_key")

    open_routes = APIRouter()
    routes = APIRouter(dependencies=[Depends(authorize)])

    @open_routes.get("/health")
    async def health():
        state.require_ready()
        return {"status": "ok"}

    @open_routes.get("/", response_class=HTMLResponse)
    async def chat_page():
        # static and secret-free: a browser cannot send a bearer key to load it; its API calls need one
        return HTMLResponse(resources.files(__package__).joinpath("static/index.html").read_text("utf-8"))

    @routes.get("/version")
    async def version():
        return {"version": importlib.metadata.version("workbench")}

    @routes.get("/metrics")
    async def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE)

    @routes.get("/v1/models")
    async def models():
        state.require_ready()
        return {"object": "list", "data": [_model_card(state)]}

    @routes.get("/v1/models/{name:path}")
    async def model(name: str):
        state.require_ready()
        state.check_model(name)
        return _model_card(state)

    @routes.post("/tokenize")
    async def tokenize(request: Request):
        req = await _request(request, state, TokenizeRequest)
        state.check_model(req.model)
        if req.messages is not None:
            ids = state.chat_ids([{"role": m.role, "content": m.content or ""} for m in req.messages],
                                 req.add_generation_prompt)
        else:
            ids = state.text_ids(req.prompt, req.add_special_tokens)
        return {"count": len(ids), "max_model_len": state.max_model_len, "tokens": ids}

    @routes.post("/detokenize")
    async def detokenize(request: Request):
        req = await _request(request, state, DetokenizeRequest)
        state.check_model(req.model)
        vocab = state.tokenizer.vocab_size
        if any(not 0 <= t < vocab for t in req.tokens):
            raise APIError(400, f"tokens: every token id must be in [0, {vocab})", "tokens")
        return {"prompt": state.tokenizer.decode(req.tokens)}

    @routes.post("/v1/completions")
    async def completions(request: Request):
        req = await _request(request, state, CompletionRequest)
        state.check_model(req.model)
        prompt_ids = [state.text_ids(p) if isinstance(p, str) else p for p in req.prompt]
        params = [req.sampling_params(state.max_tokens(req.new_tokens(), len(ids), "prompt"), state.tokenizer.vocab_size)
                  for ids in prompt_ids]
        echo = [p if isinstance(p, str) else state.tokenizer.decode(p) for p in req.prompt] if req.echo else None
        response = CompletionResponse(state.config.model_name, state.tokenizer, prompt_ids, params[0].n,
                                      req.logprobs, bool(req.stream), echo)
        return await respond(request, req, Generation(state, prompt_ids, params), response)

    @routes.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await _request(request, state, ChatCompletionRequest)
        state.check_model(req.model)
        ids = state.chat_ids(req.chat(), req.add_generation_prompt)
        params = req.sampling_params(state.max_tokens(req.new_tokens(), len(ids), "messages"),
                                     state.tokenizer.vocab_size)
        response = ChatResponse(state.config.model_name, state.tokenizer, [ids], params.n,
                                req.top_logprobs_wanted(), bool(req.stream))
        return await respond(request, req, Generation(state, [ids], [params]), response)

    app.include_router(open_routes)
    app.include_router(routes)
    return app


def _model_card(state: ServerState) -> dict:
    return {"id": state.config.model_name, "object": "model", "created": state.created, "owned_by": "workbench",
            "max_model_len": state.max_model_len}


async def _request(request: Request, state: ServerState, cls):
    """The body parsed as `cls`, once the model is loaded."""
    raw = await _body(request, state)
    state.require_ready()
    return parse(cls, raw)


async def _body(request: Request, state: ServerState) -> bytes:
    """The whole body, or 413 past --max-request-bytes (the rest is read and dropped, so the client,
    still sending, gets the answer instead of a broken connection)."""
    limit = state.config.max_request_bytes
    declared = request.headers.get("content-length", "")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            chunks.append(chunk)
        elif size > DRAIN_FACTOR * limit:  # not worth reading on: answer and let the connection drop
            break
    if size > limit or (declared.isdigit() and int(declared) > limit):
        raise APIError(413, f"the request body has {size} bytes; this server accepts at most {limit} "
                            f"(--max-request-bytes)", None, "request_too_large")
    return b"".join(chunks)
