"""The benchmark scripts' shared flags: quick and full defaults, aliases, checks, the results stem."""

from __future__ import annotations

import pytest
import torch

from workbench.bench.flags import benchmark_parser, parse_benchmark_args, save_rows

FULL = {"rounds": 5, "warmup_rounds": 1, "prompt_tokens": 128, "new_tokens": 64, "kernels": "on", "specs": ["a", "b"]}
QUICK = {"rounds": 1, "prompt_tokens": 16, "new_tokens": 8, "specs": ["a"]}


def parse(argv, **kwargs):
    parser = benchmark_parser("doc", kwargs.pop("name", "demo"), full=FULL, quick=QUICK, **kwargs)
    parser.add_argument("--specs", nargs="*", default=None)  # a script's own flag, sized by full/quick
    return parse_benchmark_args(parser, argv)


@pytest.fixture(autouse=True)
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_full_and_quick_defaults_and_the_results_stem():
    full = parse([])
    assert (full.rounds, full.warmup_rounds, full.prompt_tokens, full.new_tokens, full.kernels) == (5, 1, 128, 64, "on")
    assert full.specs == ["a", "b"] and full.out == "data/results/demo" and full.model == "smollm2-135m"
    quick = parse(["--quick"])
    assert (quick.rounds, quick.warmup_rounds, quick.prompt_tokens, quick.new_tokens) == (1, 1, 16, 8)
    assert quick.specs == ["a"] and quick.out == "data/results/demo_quick"


def test_command_line_wins_and_repeats_is_rounds():
    args = parse(["--quick", "--repeats", "4", "--new-tokens", "32", "--specs", "c", "--out", "/tmp/x", "--threads", "1"])
    assert (args.rounds, args.new_tokens, args.specs, args.out) == (4, 32, ["c"], "/tmp/x")
    assert torch.get_num_threads() == 1


def test_the_name_may_depend_on_the_arguments():
    args = parse(["--kernels", "off"], name=lambda a: f"demo_{a.kernels}")
    assert args.out == "data/results/demo_off"


@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], "--threads must be at least 1"),
    (["--rounds", "0"], "--rounds must be at least 1"),
    (["--warmup-rounds", "-1"], "--warmup-rounds must be at least 0"),
    (["--new-tokens", "1"], "--new-tokens must be at least 2"),
    (["--prompt-tokens", "0"], "--prompt-tokens must be at least 1"),
    (["--kernels", "both"], "invalid choice"),
])
def test_bad_values_exit_2_with_one_error_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        parse(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and "Traceback" not in "\n".join(err)


def test_zero_rounds_where_the_script_allows_skipping():
    assert parse(["--rounds", "0"], min_rounds=0).rounds == 0


def test_only_the_flags_a_script_sizes_are_added():
    parser = benchmark_parser("doc", "ppl", full={"max_tokens": 4096})
    options = {o for action in parser._actions for o in action.option_strings}
    assert {"--model", "--threads", "--quick", "--out", "--bandwidth"} <= options
    assert not options & {"--rounds", "--prompt-tokens", "--kernels"}


def test_the_clock_flag_where_a_script_sizes_it():
    parser = benchmark_parser("doc", "demo", full={"clock": "wall"})
    assert parse_benchmark_args(parser, ["--clock", "cpu"]).clock == "cpu"
    assert parse_benchmark_args(benchmark_parser("doc", "demo", full={"clock": "wall"}), []).clock == "wall"


SCRIPTS = ["batching", "cross_domain", "decode_stack", "decode_vs_transformers", "distillation", "evaluation", "kernels", "kv_cache",
           "lora", "onnx_runtime", "parallel", "pruning", "quantization_ppl", "serving", "speculative"]


@pytest.mark.parametrize("name", SCRIPTS)
def test_every_benchmark_script_builds_its_flags_on_the_shared_ones(name, capsys, monkeypatch):
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", path)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    main = getattr(module, "main")
    with pytest.raises(SystemExit) as exit_:  # a flag declared twice would raise argparse.ArgumentError instead
        main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert all(flag in text for flag in ("--threads", "--quick", "--out STEM", "--bandwidth", "--model"))


def test_save_rows_writes_the_table_without_the_rounds_and_the_json_with_them(tmp_path):
    import json

    import pandas as pd

    args = parse(["--out", str(tmp_path / "result")])
    rows = [{"spec": "a", "ms": 1.5, "runs_ms": [1.4, 1.6]}, {"spec": "b", "ms": 2.5, "runs_ms": [2.4, 2.6]}]
    save_rows(args, rows, method="how", run={"date": "D"}, settings=("rounds", "specs"), series="runs_ms", extra=1)
    table = pd.read_csv(tmp_path / "result.csv")
    assert list(table.columns) == ["spec", "ms"] and table["ms"].tolist() == [1.5, 2.5]
    written = json.loads((tmp_path / "result.json").read_text())
    assert written["rows"] == rows and written["settings"] == {"rounds": 5, "specs": ["a", "b"]}
    assert (written["method"], written["model"], written["run"], written["extra"]) == ("how", "smollm2-135m", {"date": "D"}, 1)
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically: no temporary files left
