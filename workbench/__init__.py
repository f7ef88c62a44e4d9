"""workbench: a real Llama-family engine, its compression and its benchmarks, for learning and research."""

from .checkpoints import load_model, load_tokenizer, save_pretrained
from .config import ModelConfig
from .errors import WorkbenchError
from .model import KVCache, LlamaModel

__all__ = ["load_model", "load_tokenizer", "save_pretrained", "ModelConfig", "LlamaModel", "KVCache",
           "WorkbenchError"]
__version__ = "0.1.0"
