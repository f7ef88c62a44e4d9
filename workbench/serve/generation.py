"""One API request inside the engine: a handle per prompt, their outputs merged as they come, and an
end that always aborts what is unfinished and gives the admission back (on success, error or a
client that went away)."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from ..errors import WorkbenchError
from .errors import from_workbench
from .state import ServerState


class Generation:
    def __init__(self, state: ServerState, prompts: list[list[int]], params: list):
        self.release = state.admit(sum(getattr(p, "n", 1) for p in params))
        self.times = state.metrics.tracker()
        self.handles = []
        try:
            for ids, p in zip(prompts, params):
                self.handles.append(state.loop.submit(ids, p))
        except WorkbenchError as e:
            self.close()
            raise from_workbench(e) from None
        except BaseException:
            self.close()
            raise

    async def outputs(self) -> AsyncIterator[tuple[int, object]]:
        """(prompt index, RequestOutput) in arrival order until every choice of every prompt finished.
        An engine-side failure of any choice raises `RequestFailedError` here."""
        queue: asyncio.Queue = asyncio.Queue()
        done = object()

        async def pump(i, handle):
            try:
                async for out in handle.aiter():
                    queue.put_nowait((i, out))
                queue.put_nowait((i, done))
            except Exception as e:
                queue.put_nowait((i, e))

        tasks = [asyncio.create_task(pump(i, h)) for i, h in enumerate(self.handles)]
        try:
            live = len(tasks)
            while live:
                i, item = await queue.get()
                if item is done:
                    live -= 1
                elif isinstance(item, Exception):
                    raise item
                else:
                    self.times.observe((i, getattr(item, "index", 0)), item)
                    yield i, item
        finally:
            for t in tasks:
                t.cancel()
            self.close()

    def close(self):
        """Abort whatever has not finished (its KV blocks are freed at the engine's next step)."""
        for h in self.handles:
            h.abort()
        self.release()


async def until_disconnected(receive):
    """Returns when the client has gone (call after the body has been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass
