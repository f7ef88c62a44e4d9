"""How a generation reaches the client: one JSON body, or server-sent events. Either way a client
that disconnects aborts the request at once, and the generation is always closed."""

from __future__ import annotations

import asyncio
import json

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..errors import RequestFailedError
from .errors import APIError, error_body
from .generation import Generation, until_disconnected

DONE = "data: [DONE]\n\n"


def _failed(out) -> APIError | None:
    """An output that ends a choice any other way than stop or length (the engine shutting down)."""
    if out.finished and out.finish_reason not in ("stop", "length"):
        return APIError(503 if out.finish_reason == "abort" else 500,
                        f"the request ended early ({out.finish_reason}): the server is shutting down")
    return None


async def respond(request: Request, req, generation: Generation, response):
    if req.stream:
        return _EventStream(events(req, generation, response), generation.close, request.receive)
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


async def events(req, generation: Generation, response):
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
