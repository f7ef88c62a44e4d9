"""`EngineLoop`: one thread owns stepping; any thread or asyncio task submits requests and reads them.

    loop = EngineLoop(engine)
    handle = loop.submit("Hello", SamplingParams(max_tokens=32))
    for out in handle:                     # blocking; or `async for out in handle.aiter()`
        print(out.delta_text, end="")
    loop.shutdown()

The thread steps while the engine has unfinished requests and sleeps on a condition otherwise
(no busy spin). Each request's outputs reach its `RequestHandle` through the engine's `on_output`
callback: a thread-safe buffer for blocking readers, `call_soon_threadsafe` into an
`asyncio.Queue` for an asyncio reader, so the event loop never blocks on the engine.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque

from ..errors import EngineClosedError, RequestFailedError
from ..settings import now as clock
from .engine import Engine, RequestMetrics, RequestOutput
from .sampling import SamplingParams

POLICY_WAIT_S = 0.005  # a static/dynamic batch waiting for requests: look again after this long


class RequestHandle:
    """One submitted request: its outputs (tagged with `index` when n > 1) as they come.

    Read it once, blocking (`for out in handle`) or from asyncio (`handle.aiter()`); both end after
    every choice finished and raise `RequestFailedError` when the request failed inside a step,
    after yielding what came before. A reader that stops early (break, close, a cancelled task)
    aborts the request. `result()` waits for the final output of each choice.
    """

    def __init__(self, loop: "EngineLoop", n: int):
        self._loop, self.n = loop, n
        self.request_id: str | None = None
        self._lock = threading.Condition()
        self._buffer: deque[RequestOutput] = deque()
        self._async: tuple[asyncio.AbstractEventLoop, asyncio.Queue] | None = None
        self.final: list[RequestOutput | None] = [None] * n
        self._num_finished = 0

    @property
    def finished(self) -> bool:
        return self._num_finished == self.n

    def _put(self, out: RequestOutput):
        """Called by the stepping thread."""
        with self._lock:
            if out.finished:
                self.final[out.index] = out
                self._num_finished += 1
            if self._async is not None:
                event_loop, queue = self._async
                try:
                    event_loop.call_soon_threadsafe(queue.put_nowait, out)
                except RuntimeError:  # the reader's event loop is closed: nobody is listening
                    pass
            else:
                self._buffer.append(out)
                self._lock.notify_all()
        if out.finished and self.finished:
            self._loop._done(self)

    def _check(self, out: RequestOutput) -> RequestOutput:
        if out.finish_reason == "error":
            self.abort()  # the other choices of a failed request stop too
            raise RequestFailedError(f"request {self.request_id} failed: {out.error}")
        return out

    def __iter__(self):
        seen = 0
        try:
            while seen < self.n:
                with self._lock:
                    while not self._buffer:
                        self._lock.wait()
                    out = self._buffer.popleft()
                seen += out.finished
                yield self._check(out)
        finally:
            if seen < self.n:
                self.abort()  # the reader stopped early: nobody wants the rest

    async def aiter(self):
        """Outputs for an asyncio reader (the event loop never waits on the engine)."""
        queue: asyncio.Queue = asyncio.Queue()
        with self._lock:
            if self._async is not None:
                raise RuntimeError("this request is already being read from asyncio")
            for out in self._buffer:
                queue.put_nowait(out)
            self._buffer.clear()
            self._async = (asyncio.get_running_loop(), queue)
        seen = 0
        try:
            while seen < self.n:
                out = await queue.get()
                seen += out.finished
                yield self._check(out)
        finally:
            if seen < self.n:
                self.abort()  # the reader stopped early or was cancelled (a client went away)

    def result(self) -> list[RequestOutput]:
        """The final output of each choice, by index (blocks until all finished)."""
        with self._lock:
            while not self.finished:
                self._lock.wait()
            final = list(self.final)
        for out in final:
            self._check(out)
        return final

    def abort(self):
        """Stop the request (idempotent); its KV blocks are free after the next step at the latest."""
        if self.request_id is not None:
            self._loop._abort(self.request_id)


class EngineLoop:
    """Owns `engine.step()` in a daemon thread; `submit` from anywhere."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._wake = threading.Condition()
        self._unfinished: set[RequestHandle] = set()
        self._closed = False
        self.error: BaseException | None = None  # an unexpected failure of the loop itself
        self._thread = threading.Thread(target=self._run, name="workbench-engine-loop", daemon=True)
        self._thread.start()

    def submit(self, prompt, params: SamplingParams | None = None, request_id: str | None = None) -> RequestHandle:
        """Queue a prompt (text, token ids or chat messages). Bad input raises here
        (InvalidParameterError, ContextLengthError, CapacityError) and queues nothing."""
        params = params or SamplingParams()
        handle = RequestHandle(self, params.n if isinstance(params, SamplingParams) else 1)
        with self._wake:  # held so that shutdown cannot slip in between
            if self._closed:
                raise EngineClosedError("the engine loop is shut down")
            self._unfinished.add(handle)  # before the first output can arrive
            try:
                handle.request_id = self.engine.add_request(prompt, params, request_id, on_output=handle._put)
            except BaseException:
                self._unfinished.discard(handle)
                raise
            self._wake.notify()
        return handle

    def _abort(self, request_id: str):
        with self._wake:
            if self.engine.abort(request_id):
                self._wake.notify()

    def _done(self, handle: RequestHandle):
        with self._wake:
            self._unfinished.discard(handle)

    @property
    def num_unfinished(self) -> int:
        """Requests submitted and not finished (for a bounded queue)."""
        return len(self._unfinished)

    def stats(self) -> dict:
        """num_running, num_waiting, kv_blocks_total, kv_blocks_free, prefix_cache_queried_tokens,
        prefix_cache_hit_tokens, prompt_tokens_total, generation_tokens_total."""
        return self.engine.counters()

    def _run(self):
        engine = self.engine
        while True:
            with self._wake:
                while not self._closed and not engine.has_unfinished():
                    self._wake.wait()
                if self._closed and not engine.has_unfinished():
                    return
            try:
                engine.step(drain=False)
            except BaseException as e:  # a bug, not a bad request: fail every request, keep no blocks
                self.error = e
                self._fail_all(e)
                return
            if not engine.last_schedule:  # a batching policy holds requests back: not a busy spin
                with self._wake:
                    self._wake.wait(POLICY_WAIT_S)

    def _fail_all(self, e: BaseException):
        with self._wake:
            self._closed = True
            handles = list(self._unfinished)
        message = f"the engine loop stopped: {type(e).__name__}: {e}"
        for handle in handles:
            for index, final in enumerate(handle.final):
                if final is None:
                    metrics = RequestMetrics(clock(), None, None, None, clock(), 0, 0)
                    handle._put(RequestOutput(handle.request_id, [], [], [], "", "", True, "error", metrics,
                                              index, error=message))

    def shutdown(self, timeout: float | None = None):
        """Abort every request, let the thread report the aborts, and join it."""
        with self._wake:
            self._closed = True
            for handle in list(self._unfinished):
                if handle.request_id is not None:
                    self.engine.abort(handle.request_id)
            self._wake.notify()
        self._thread.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.shutdown()
