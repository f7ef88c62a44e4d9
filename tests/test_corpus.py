"""Named corpora and calibration sets: the licences corpus's halves, the spec parser, its errors, the drawn tokens."""

import pytest

from workbench import load_model
from workbench.corpus import (CORPORA, CalibrationPart, CalibrationSet, builtin_text, calibration_token_ids,
                              corpus_text, licenses_text, parse_calibration)
from workbench.corpus.calibration import PROMPTS, generated_token_ids
from workbench.errors import CalibrationSpecError, EmptyTextError, InvalidParameterError, WorkbenchError


@pytest.fixture(scope="module")
def tiny():
    return load_model("tiny-random")


def _paragraphs(text):
    return {p.strip() for p in text.split("\n\n") if len(p.strip()) > 80}


def test_licenses_halves_are_disjoint_english_and_large_enough(tiny):
    _, tok = tiny
    evaluation, calibration = licenses_text("evaluation"), licenses_text("calibration")
    assert "GNU GENERAL PUBLIC LICENSE" in evaluation and "Apache License" in calibration
    assert "Apache License" not in evaluation and "GNU GENERAL PUBLIC LICENSE" not in calibration
    assert not _paragraphs(evaluation) & _paragraphs(calibration)  # no paragraph on both sides
    assert len(tok.encode(evaluation, add_special_tokens=False)) >= 8192
    assert len(tok.encode(calibration, add_special_tokens=False)) >= 4096
    assert licenses_text("train") == calibration
    assert licenses_text("all").startswith(evaluation) and licenses_text("all").endswith(calibration.strip("\n"))


def test_named_corpora_and_their_errors():
    assert set(CORPORA) >= {"builtin", "licenses"}
    assert corpus_text() == builtin_text("evaluation")
    assert corpus_text("licenses", "calibration") == licenses_text("calibration")
    with pytest.raises(InvalidParameterError, match="licenses"):
        corpus_text("wikipedia")
    with pytest.raises(InvalidParameterError, match="calibration"):
        corpus_text("licenses", "test")


@pytest.mark.parametrize("spec, parts, shares", [
    (None, [("builtin", None, None)], [2048]),
    ("builtin", [("builtin", None, None)], [2048]),
    ("licenses:512", [("licenses", 512, None)], [512]),
    ("generated:2k", [("generated", 2048, None)], [2048]),
    ("builtin:1024+generated:1024", [("builtin", 1024, None), ("generated", 1024, None)], [1024, 1024]),
    ("builtin+generated", [("builtin", None, None), ("generated", None, None)], [1024, 1024]),
    ("file:notes.txt", [("file", None, "notes.txt")], [2048]),
    ("file:C:/data/a.txt:300 + builtin", [("file", 300, "C:/data/a.txt"), ("builtin", None, None)], [300, 2048]),
    ("file:a:b.txt", [("file", None, "a:b.txt")], [2048]),
])
def test_spec_parser(spec, parts, shares):
    calib = parse_calibration(spec)
    assert [(p.source, p.tokens, p.path) for p in calib.parts] == parts
    assert calib.shares(2048) == shares
    assert parse_calibration(str(calib)) == calib  # round trip
    assert parse_calibration(calib) is calib


@pytest.mark.parametrize("spec, word", [
    ("", "non-empty"), ("bogus", "unknown calibration source"), ("builtin:", "token count"),
    ("builtin:0", "positive"), ("builtin:-5", "positive"), ("builtin:12x", "positive"), ("builtin+", "empty"),
    ("file:", "names no file"), ("file::100", "names no file"), ("licenses:1:2", "positive"), (42, "string"),
])
def test_spec_errors_are_specific(spec, word):
    with pytest.raises(CalibrationSpecError, match=word) as e:
        parse_calibration(spec)
    assert isinstance(e.value, WorkbenchError) and isinstance(e.value, InvalidParameterError)


def test_drawn_tokens_follow_the_spec(tiny, tmp_path):
    model, tok = tiny
    builtin = tok.encode(builtin_text("calibration"), add_special_tokens=False)
    licenses = tok.encode(licenses_text("calibration"), add_special_tokens=False)
    assert calibration_token_ids(None, tok, default_tokens=300) == builtin[:300]
    assert calibration_token_ids("licenses:100+builtin:50", tok) == licenses[:100] + builtin[:50]
    assert calibration_token_ids("licenses+builtin", tok, default_tokens=200) == licenses[:100] + builtin[:100]
    notes = tmp_path / "notes.txt"
    notes.write_text("A short note about lighthouses and the sea. " * 10)
    note_ids = tok.encode(notes.read_text(), add_special_tokens=False)
    assert calibration_token_ids(f"file:{notes}", tok) == note_ids  # uncounted: what the file has
    assert calibration_token_ids(f"file:{notes}:20", tok) == note_ids[:20]
    with pytest.raises(CalibrationSpecError, match="gives only"):
        calibration_token_ids(f"file:{notes}:5000", tok)
    with pytest.raises(EmptyTextError, match="not found"):
        calibration_token_ids(f"file:{tmp_path}/missing.txt", tok)
    with pytest.raises(CalibrationSpecError, match="model"):
        calibration_token_ids("generated:64", tok)
    with pytest.raises(CalibrationSpecError, match="tokenizer"):
        calibration_token_ids("builtin", None)


def test_generated_text_is_deterministic_seeded_and_cached(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    model, tok = tiny
    a = generated_token_ids(model, tok, 40, seed=0, cache=False)
    b = generated_token_ids(model, tok, 40, seed=0, cache=False)
    c = generated_token_ids(model, tok, 40, seed=1, cache=False)
    assert len(a) == 40 and a == b and a != c
    assert tok.decode(a[:1]) == PROMPTS[0]  # the text opens with the first neutral prompt
    assert calibration_token_ids("generated:40", tok, model=model) == a  # writes the cache
    files = list((tmp_path / "calibration").glob("generated-*.json"))
    assert len(files) == 1
    assert generated_token_ids(model, tok, 40) == a  # read back from the cache
    assert calibration_token_ids("builtin:10+generated:40", tok, model=model)[10:] == a


def test_generated_cache_follows_the_weights(tiny, tmp_path, monkeypatch):
    import copy

    import torch

    monkeypatch.setenv("WORKBENCH_CACHE", str(tmp_path))
    model, tok = tiny
    generated_token_ids(model, tok, 16)
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight.mul_(0.5)
    generated_token_ids(other, tok, 16)
    assert len(list((tmp_path / "calibration").glob("generated-*.json"))) == 2  # not the first model's text


def test_calibration_set_dataclasses_print_as_specs():
    calib = CalibrationSet((CalibrationPart("builtin", 1024), CalibrationPart("file", None, "x.txt")))
    assert str(calib) == "builtin:1024+file:x.txt" and not calib.needs_model
    assert parse_calibration("generated").needs_model
