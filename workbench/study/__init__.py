"""The compression trade-off study: a grid of models x prune x quant x KV dtypes, every cell measured
by the same code, results in one resumable file, Pareto fronts and a report (`workbench study`)."""

from .analysis import composition, filter_cells, mixed_vs_uniform, pareto_front
from .mixed import allocate, apply_plan, sensitivity_scan
from .results import append_row, read_meta, read_results
from .runner import run_study
from .spec import Study, cell_key, code_version, config_hash, load_study

__all__ = ["Study", "allocate", "append_row", "apply_plan", "cell_key", "code_version", "composition",
           "config_hash", "filter_cells", "load_study", "mixed_vs_uniform", "pareto_front", "read_meta",
           "read_results", "run_study", "sensitivity_scan"]
