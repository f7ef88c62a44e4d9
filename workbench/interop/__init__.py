"""Other runtimes: our model exported to ONNX (KV cache in and out) and run on ONNX Runtime.

    meta = export_onnx(model, "model.onnx", name="smollm2-135m")     # float32, torch's exporter
    runner = OnnxRunner("model.onnx", expect=model)                 # refuses a file from another model
    tokens = runner.generate(prompts, max_new_tokens=32)              # greedy, step by step
    report = compare(runner, model, tokenizer, ["The capital of France is"])   # against our engine
    quantize_int8("model.onnx", "model-int8.onnx")                    # ONNX Runtime's dynamic int8

Needs the optional packages of the [onnx] extra (onnx, onnxruntime, onnxscript).
"""

from .check import compare
from .onnx_export import FORMAT, INT8_METHOD, export_onnx, quantize_int8, read_metadata, weights_fingerprint
from .onnx_runtime import OnnxRunner, check_identity

__all__ = ["FORMAT", "INT8_METHOD", "OnnxRunner", "check_identity", "compare", "export_onnx", "quantize_int8",
           "read_metadata", "weights_fingerprint"]
