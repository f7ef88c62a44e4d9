"""What evalscope and the libraries under it read to stay off the network (they fall back to
downloads otherwise: tokenizers from the Hub, datasets from ModelScope, NLTK data)."""

from __future__ import annotations

import contextlib
import os

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
    "MODELSCOPE_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


@contextlib.contextmanager
def offline():
    """Set OFFLINE_ENV for the block (evalscope reads some of it at call time), restore afterwards."""
    old = {k: os.environ.get(k) for k in OFFLINE_ENV}
    os.environ.update(OFFLINE_ENV)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def quiet(log_path):
    """evalscope's console (log lines, progress bars, rich tables) into `log_path`, errors still shown."""
    import logging

    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict) if n.startswith("evalscope")]
    saved = []
    for lg in loggers:
        for h in lg.handlers:
            if type(h) is logging.StreamHandler:
                saved.append((h, h.level))
                h.setLevel(logging.ERROR)
    with open(log_path, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        try:
            yield
        finally:
            for h, level in saved:
                h.setLevel(level)


def run_isolated(fn, *args, **kwargs):
    """`fn(...)` in a thread of its own: evalscope runs its own event loop, which cannot start in a
    thread that already runs one (a notebook's kernel, an async caller). Its exception is re-raised."""
    import threading

    result, error = [], []

    def target():
        try:
            result.append(fn(*args, **kwargs))
        except BaseException as e:  # noqa: BLE001 - handed to the caller's thread
            error.append(e)

    t = threading.Thread(target=target, name="evalscope", daemon=True)
    t.start()
    t.join()
    if error:
        raise error[0]
    return result[0]
