"""What evalscope and the libraries under it read to stay off the network (they fall back to
downloads otherwise: tokenizers from the Hub, datasets from ModelScope, NLTK data)."""

from __future__ import annotations

import contextlib
import functools
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


def _call_logged(log_path, cwd, env, fn, args, kwargs):
    """In the child: the console (file descriptors 1 and 2, so C and Python writers alike) into the log."""
    import sys

    # a forkserver's child starts where and with what the server started: take the caller's instead
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    with open(log_path, "a", encoding="utf-8") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        sys.stdout, sys.stderr = os.fdopen(1, "w", buffering=1), os.fdopen(2, "w", buffering=1)
        os.environ.update(OFFLINE_ENV)
        return fn(*args, **kwargs)


@functools.cache
def _context():
    """A forkserver that has imported evalscope once: each run forks a clean child from it, which
    saves the 5-10 s every freshly spawned process spends importing evalscope and torch."""
    import multiprocessing as mp

    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["evalscope.run", "evalscope.perf.main"])
    return context


def run_isolated(fn, *args, log_path, **kwargs):
    """`fn(...)` in a fresh process, its console written to `log_path`; its exception is re-raised.

    evalscope keeps process-wide state between runs (progress bars and logging handlers bound to the
    streams of the run before, its own event loop, which cannot start in a thread that already runs
    one: a notebook's kernel): a second run in one process can fail. A process forked from a server
    that has only imported evalscope starts clean.
    """
    # evalscope's progress bars fail when tqdm is switched off (TqdmLogging reads attributes a disabled
    # bar never sets), and some library we run beside it sets TQDM_DISABLE=1: tqdm reads it when
    # imported, so the server that imports it starts without it
    saved = os.environ.pop("TQDM_DISABLE", None)
    pool = _context().Pool(1)
    try:
        return pool.apply(_call_logged, (str(log_path), os.getcwd(), dict(os.environ), fn, args, kwargs))
    finally:
        # Let the worker exit on its own: evalscope's perf run leaves a SIGTERM handler behind in it, so
        # the pool's terminate() (what `with Pool()` does on exit) can wait forever for a worker that ignores it.
        pool.close()
        pool.join()
        if saved is not None:
            os.environ["TQDM_DISABLE"] = saved
