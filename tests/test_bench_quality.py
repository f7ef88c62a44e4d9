"""The quantization quality table: one fresh quantized copy per spec, the float model untouched."""

import pytest
import torch

from workbench import load_model
from workbench.bench import quantization_table
from workbench.errors import InvalidParameterError
from workbench.quant.linear import QuantizedLinear


def test_table_rows_and_untouched_model():
    model, tok = load_model("tiny-random")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    table = quantization_table(model, tok, ["float32", "bfloat16", "int8", "int4-g32"], eval_tokens=96, window=32,
                               on_row=lambda rows: seen.append(len(rows)), progress=False)
    assert list(table["spec"]) == ["float32", "bfloat16", "int8", "int4-g32"] and seen == [1, 2, 3, 4]
    t = table.set_index("spec")
    assert t.loc["float32", "ppl_vs_float32"] == 0 and t.loc["float32", "bits_per_weight"] == 32
    assert t.loc["bfloat16", "bits_per_weight"] == 16
    assert t.loc["int4-g32", "weight_bytes"] < t.loc["int8", "weight_bytes"] < t.loc["bfloat16", "weight_bytes"]
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_unknown_spec_lists_the_valid_ones():
    model, tok = load_model("tiny-random")
    with pytest.raises(InvalidParameterError, match="int4-g128"):
        quantization_table(model, tok, ["int3"], eval_tokens=64, window=32, progress=False)
