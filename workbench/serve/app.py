"""The routes: OpenAI's completions, chat completions and models, plus health, version, tokenize,
detokenize, metrics and the chat page. Every error leaves as OpenAI's error JSON."""

from __future__ import annotations

import asyncio
import hmac
import importlib.metadata
import json
import threading
from contextlib import asynccontextmanager
from importlib import resources

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import RequestFailedError
from .errors import APIError, error_body
from .generation import Generation, until_disconnected
from .metrics import CONTENT_TYPE
from .protocol import ChatCompletionRequest, CompletionRequest, DetokenizeRequest, TokenizeRequest, parse
from .responses import ChatResponse, CompletionResponse
from .state import ServerState

DONE = "data: [DONE]\n\n"
DRAIN_FACTOR = 64  # an oversized body is read (and dropped) up to this many times the bound


def build_app(state: ServerState) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=state.load, name="workbench-load", daemon=True).start()
        yield
        state.shutdown()

    app = FastAPI(title="workbench", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.workbench = state

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
        return await _respond(request, req, Generation(state, prompt_ids, params), response)

    @routes.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = await _request(request, state, ChatCompletionRequest)
        state.check_model(req.model)
        ids = state.chat_ids(req.chat(), req.add_generation_prompt)
        params = req.sampling_params(state.max_tokens(req.new_tokens(), len(ids), "messages"),
                                     state.tokenizer.vocab_size)
        response = ChatResponse(state.config.model_name, state.tokenizer, [ids], params.n,
                                req.top_logprobs_wanted(), bool(req.stream))
        return await _respond(request, req, Generation(state, [ids], [params]), response)

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


def _failed(out) -> APIError | None:
    """An output that ends a choice any other way than stop or length (the engine shutting down)."""
    if out.finished and out.finish_reason not in ("stop", "length"):
        return APIError(503 if out.finish_reason == "abort" else 500,
                        f"the request ended early ({out.finish_reason}): the server is shutting down")
    return None


async def _respond(request: Request, req, generation: Generation, response):
    if req.stream:
        return _EventStream(_events(req, generation, response), generation.close, request.receive)
    return await _whole(request, generation, response)


async def _whole(request: Request, generation: Generation, response):
    """Run to the end and answer with one JSON body; a client that disconnects first aborts the request."""
    async def run():
        try:
            async for i, out in generation.outputs():
                if (error := _failed(out)) is not None:
                    raise error
                response.add(i, out)
        except RequestFailedError as e:
            raise APIError(500, str(e), None, "generation_failed") from None
        return JSONResponse(response.body())

    work = asyncio.create_task(run())
    gone = asyncio.create_task(until_disconnected(request.receive))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
        if work.done():
            return work.result()
        return Response(status_code=499)  # nobody is left to read it
    finally:
        work.cancel()
        gone.cancel()
        generation.close()


def _sse(body: dict) -> str:
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


async def _events(req, generation: Generation, response):
    """Server-sent events: a chunk per output, the usage chunk if asked, then [DONE]. A failure after
    the first chunk can only be told in-band, as `data: {"error": ...}`."""
    def chunk(choices):
        body = response.chunk(choices, with_usage=req.include_usage)
        if req.continuous_usage:
            body["usage"] = response.usage()
        return body

    first = response.first_deltas()
    if first:
        yield _sse(chunk(first))
    try:
        async for i, out in generation.outputs():
            if (error := _failed(out)) is not None:
                yield _sse(error.body())
                yield DONE
                return
            delta = response.add(i, out)
            if delta is not None:
                yield _sse(chunk([delta]))
    except RequestFailedError as e:
        yield _sse(error_body(500, str(e), None, "generation_failed"))
        yield DONE
        return
    if req.include_usage:
        yield _sse(response.usage_chunk())
    yield DONE


class _EventStream(StreamingResponse):
    """An SSE response that always closes its generation (even if it never started streaming) and
    aborts it as soon as the client disconnects, not only at the next token sent."""

    def __init__(self, content, close, receive):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._close, self._receive = close, receive

    async def __call__(self, scope, receive, send):
        watcher = asyncio.create_task(until_disconnected(self._receive))
        watcher.add_done_callback(lambda t: t.cancelled() or self._close())
        try:
            await super().__call__(scope, receive, send)
        finally:
            watcher.cancel()
            self._close()
