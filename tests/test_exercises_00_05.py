"""Exercises of notebooks 00-05: the byte formulas behind their checks agree with what the package
really stores, and an untouched answer cell (`answer = ...`, or a function whose body is `...`) reads
"no answer yet"."""

import dataclasses
import importlib

import pytest
import torch

from workbench.exercises import quantizing_llms, weights
from workbench.exercises.checking import bundled_config
from workbench.model import LlamaModel
from workbench.quant import quantize_

# small, and with an input width (96) that groups of 64 do not divide, so padding counts
TINY = dataclasses.replace(bundled_config(), vocab_size=256, hidden_size=96, intermediate_size=160,
                           num_hidden_layers=2, num_attention_heads=3, num_key_value_heads=1, head_dim=32)


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("spec", ["int4-g64", "int4-g32", "int8", "q8_0"])
def test_byte_formulas_match_quantized_models(spec, tied):
    cfg = dataclasses.replace(TINY, tie_word_embeddings=tied)
    torch.manual_seed(0)
    model = LlamaModel(cfg)
    assert model.num_parameters() == cfg.num_parameters()
    quantized = quantize_(model, spec)
    if spec.startswith("int4"):
        expected = quantizing_llms.int4_bytes(cfg, int(spec.removeprefix("int4-g")))
    elif spec == "int8":
        expected = quantizing_llms.int8_bytes(cfg)
    else:
        if not tied:
            pytest.skip("q8_0_bytes describes a tied model (the exercise's)")
        expected = weights.q8_0_bytes(cfg)
    assert quantized.weight_bytes() == expected


MODULES = ["tour", "weights", "quantization_math", "quantizing_llms", "pruning", "distillation"]


@pytest.mark.parametrize("module", MODULES)
def test_untouched_answer_cells_read_no_answer_yet(module):
    def untouched(*args):
        ...

    exercises = importlib.import_module(f"workbench.exercises.{module}").EXERCISES
    assert len(exercises) >= 2
    for exercise in exercises:
        assert "no answer yet" in exercise.check(...).message, exercise.name
        if callable(exercise.solution()):
            assert "no answer yet" in exercise.check(untouched).message, exercise.name
