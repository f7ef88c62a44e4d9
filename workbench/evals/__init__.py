"""The evalscope bridge: load (`evalscope perf`) and answers (`evalscope eval`) of a model served by
`workbench serve`, reached over HTTP only (this room never imports the server or the engine).

    from workbench.evals import Variant, served, perf_sweep, run_tasks
    with served(Variant.parse("quant=int8")) as server:
        perf = perf_sweep(server, parallel=[1, 2], number=4, out_dir="runs/perf")
        scores = run_tasks(server, ["fidelity", "mcq"], work_dir="runs/tasks")
"""

from .keys import EVALSCOPE_VERSION, EvalscopeOutputError
from .offline import OFFLINE_ENV, offline
from .peers import llama_cpp_peer
from .perf import perf_sweep
from .server import Server, ServerUnreachableError, Variant, connect, scrape_metrics, served
from .tasks import TASK_SETS, DatasetFormatError, run_tasks, write_references

__all__ = ["EVALSCOPE_VERSION", "EvalscopeOutputError", "OFFLINE_ENV", "offline", "llama_cpp_peer", "perf_sweep",
           "Server", "ServerUnreachableError", "Variant", "connect", "scrape_metrics", "served", "TASK_SETS",
           "DatasetFormatError", "run_tasks", "write_references"]
