"""ONNX export and ONNX Runtime: the same logits and greedy tokens as our engine, a refused foreign file, the CLI.

The bundled model is exported once for the module (about a minute); the CLI test and the foreign
files use the small random model.
"""

from __future__ import annotations

import json

import pytest
import torch

for _module in ("onnx", "onnxruntime", "onnxscript"):
    pytest.importorskip(_module, reason=f"{_module} is not installed: pip install '.[onnx]' (make test installs it)")

from workbench.checkpoints import load_model  # noqa: E402
from workbench.cli import main  # noqa: E402
from workbench.errors import OnnxModelMismatchError  # noqa: E402
from workbench.interop import OnnxRunner, compare, export_onnx, read_metadata  # noqa: E402
from workbench.interop.check import ours_greedy  # noqa: E402
from workbench.settings import pick  # noqa: E402
from workbench.verify.reference import DEFAULT_PROMPTS  # noqa: E402

NEW_TOKENS = pick(8, 32)


@pytest.fixture(scope="module")
def exported(model_and_tokenizer, tmp_path_factory):
    model, _ = model_and_tokenizer
    path = tmp_path_factory.mktemp("onnx") / "smollm2.onnx"
    meta = export_onnx(model, path, name="smollm2-135m")
    return path, meta


@pytest.fixture(scope="module")
def runner(exported, model_and_tokenizer):
    return OnnxRunner(exported[0], expect=model_and_tokenizer[0], expect_name="smollm2-135m", threads=2)


@pytest.fixture(scope="module")
def report(runner, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    return compare(runner, model, tokenizer, DEFAULT_PROMPTS, NEW_TOKENS)


def test_the_graph_is_our_forward_and_onnx_runtime_agrees_within_float_noise(report):
    assert report["graph_max_abs_diff"] == 0.0  # the traced module computes exactly our forward
    assert report["logits_close"], report["max_abs_logit_diff"]
    assert report["share_within_1e-4"] > 0.999  # measured: about 1.1e-4 at most, with logits up to 33


def test_greedy_tokens_are_identical_to_our_engine(report):
    assert report["greedy_match"], (report["onnx_tokens"], report["ours_tokens"])
    assert all(len(t) == NEW_TOKENS for t in report["onnx_tokens"])


def test_dynamic_batch_of_unequal_prompts(runner, model_and_tokenizer, report):
    model, tokenizer = model_and_tokenizer
    assert report["batch_greedy_match"]  # all reference prompts at once, left-padded
    prompts = [tokenizer.encode(DEFAULT_PROMPTS[0]), tokenizer.encode(DEFAULT_PROMPTS[3])]
    assert len(prompts[0]) != len(prompts[1])
    assert runner.generate(prompts, NEW_TOKENS) == ours_greedy(model, prompts, NEW_TOKENS)
    # a decode step sees every earlier position through the present -> past tensors
    ids = torch.tensor([prompts[0]])
    logits = runner(ids)
    assert tuple(logits.shape) == (1, len(prompts[0]), model.config.vocab_size)


def test_metadata_names_the_source(exported, model_and_tokenizer):
    path, meta = exported
    stored = read_metadata(path)
    assert stored == {**stored, **meta}
    assert stored["workbench.model"] == "smollm2-135m" and stored["workbench.quantization"] == "float32"
    assert json.loads(stored["workbench.config"])["num_hidden_layers"] == model_and_tokenizer[0].config.num_hidden_layers


def export_with_cli(path, capsys, *extra) -> tuple[int, str, str]:
    try:
        status = main(["export", str(path), "--model", "tiny-random", "--threads", "1", "--json", *extra])
    except SystemExit as e:
        status = e.code
    out = capsys.readouterr()
    return status, out.out, out.err


def test_cli_exports_onnx_atomically_and_refuses_other_types(tmp_path, capsys, model_and_tokenizer):
    path = tmp_path / "tiny.onnx"
    status, out, err = export_with_cli(path, capsys)
    assert status in (0, None), err
    result = json.loads(out)  # the exporter's progress went to stderr: stdout is the one JSON line
    assert result["type"] == "float32" and result["bytes"] == path.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]  # no temporary file left
    tiny, tokenizer = load_model("tiny-random")
    runner = OnnxRunner(path, expect=tiny, threads=1)
    prompt = [tokenizer.encode(DEFAULT_PROMPTS[0])]
    assert runner.generate(prompt, 4) == ours_greedy(tiny, prompt, 4)

    # another model's file: the runner names what differs
    with pytest.raises(OnnxModelMismatchError, match="tiny-random.*hidden_size 64 .file. vs 576 .model.*num_hidden_layers"):
        OnnxRunner(path, expect=model_and_tokenizer[0], expect_name="smollm2-135m")
    with pytest.raises(OnnxModelMismatchError, match="same configuration .* other weights"):
        OnnxRunner(path, expect=load_model("tiny-random", seed=1)[0])

    status, out, err = export_with_cli(tmp_path / "bad.onnx", capsys, "--type", "Q8_0")
    assert status == 2 and len(err.strip().splitlines()) == 1 and "F32 or INT8" in err


def test_a_file_not_exported_by_us_is_refused(tmp_path, model_and_tokenizer):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    path = tmp_path / "other.onnx"
    onnx.save(helper.make_model(graph), str(path))
    with pytest.raises(OnnxModelMismatchError, match="not a workbench ONNX export"):
        OnnxRunner(path, expect=model_and_tokenizer[0])
    with pytest.raises(OnnxModelMismatchError, match="no such ONNX file"):
        OnnxRunner(tmp_path / "missing.onnx")


def test_a_second_export_of_the_same_weights_is_copied_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path / "cache"))
    tiny, _ = load_model("tiny-random")
    first = export_onnx(tiny, tmp_path / "a.onnx", name="tiny-random")
    assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1

    def exporter_ran(*args, **kwargs):
        raise AssertionError("the exporter ran")

    monkeypatch.setattr(torch.onnx, "export", exporter_ran)
    assert export_onnx(tiny, tmp_path / "b.onnx", name="tiny-random") == first
    assert (tmp_path / "b.onnx").read_bytes() == (tmp_path / "a.onnx").read_bytes()
    # other weights, another name, another opset or no cache: a new export
    for model, kwargs in ((load_model("tiny-random", seed=1)[0], {}), (tiny, {"name": "other"}),
                          (tiny, {"opset": 19}), (tiny, {"cache": False})):
        with pytest.raises(AssertionError, match="the exporter ran"):
            export_onnx(model, tmp_path / "c.onnx", **{"name": "tiny-random", **kwargs})
    assert not (tmp_path / "c.onnx").exists()
