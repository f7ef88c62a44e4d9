"""Files: nothing lost, nothing stale. Atomic writes, locked appends, re-saves that leave no old weights."""

from __future__ import annotations

import multiprocessing as mp
import os
import stat

import pandas as pd
import pytest
import torch

from workbench import load_model, save_pretrained
from workbench.checkpoints import cache as weight_cache
from workbench.checkpoints.hf_dir import read_state_dict
from workbench.io import append_csv_row, atomic_path, atomic_write_bytes


def test_atomic_write_has_the_mode_of_a_plain_open(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"x")
    (tmp_path / "b.bin").write_bytes(b"x")
    assert stat.S_IMODE(os.stat(tmp_path / "a.bin").st_mode) == stat.S_IMODE(os.stat(tmp_path / "b.bin").st_mode)
    assert not list(tmp_path.glob(".*.tmp"))


def test_atomic_path_leaves_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "out.gguf"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"old" and not list(tmp_path.glob(".*.tmp"))


def test_two_atomic_paths_for_one_target_do_not_share_a_temporary(tmp_path):
    with atomic_path(tmp_path / "m.gguf") as a, atomic_path(tmp_path / "m.gguf") as b:
        assert a != b


def _append_many(path, writer, rows):
    for i in range(rows):
        append_csv_row(path, {"writer": writer, "i": i, f"only_{writer}": 1})


def test_two_processes_appending_lose_no_row(tmp_path):
    path = tmp_path / "results.csv"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_append_many, args=(path, w, 15)) for w in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    frame = pd.read_csv(path)
    assert len(frame) == 30 and sorted(frame.groupby("writer").size()) == [15, 15]
    assert {"only_0", "only_1"} <= set(frame.columns)  # the union of the columns


def test_a_single_file_save_over_a_sharded_one_leaves_no_old_shards(tmp_path):
    model, tok = load_model("tiny-random")
    save_pretrained(model, tmp_path, tok, max_shard_bytes=100_000)
    assert (tmp_path / "model.safetensors.index.json").is_file()
    other, _ = load_model("tiny-random", seed=1)
    save_pretrained(other, tmp_path, tok)
    assert not (tmp_path / "model.safetensors.index.json").exists() and not list(tmp_path.glob("model-*"))
    state = read_state_dict(tmp_path)
    assert torch.equal(state["model.norm.weight"], other.state_dict()["model.norm.weight"])
    assert torch.equal(state["model.layers.0.self_attn.q_proj.weight"],
                       other.state_dict()["model.layers.0.self_attn.q_proj.weight"])


def test_a_sharded_save_over_another_sharded_one_keeps_only_its_shards(tmp_path):
    model, tok = load_model("tiny-random")
    save_pretrained(model, tmp_path, tok, max_shard_bytes=50_000)
    many = sorted(p.name for p in tmp_path.glob("model-*"))
    save_pretrained(model, tmp_path, tok, max_shard_bytes=400_000)
    fewer = sorted(p.name for p in tmp_path.glob("model-*"))
    assert len(fewer) < len(many) and all(f"-of-{len(fewer):05d}" in name for name in fewer)


def _build_entry(source, root, marker):
    os.environ["WORKBENCH_CACHE"] = str(root)

    def build(tmp):
        (tmp / "weights.bin").write_text(marker)

    return str(weight_cache.cached_dir(source, build))


def test_concurrent_cache_builds_keep_one_complete_entry(tmp_path):
    source = tmp_path / "model.gguf"
    source.write_bytes(b"GGUF" + os.urandom(64))
    with mp.get_context("spawn").Pool(2) as pool:
        dirs = pool.starmap(_build_entry, [(source, tmp_path / "cache", f"writer{i}") for i in range(2)])
    assert dirs[0] == dirs[1]
    entry = tmp_path / "cache" / "gguf"
    assert (entry / os.path.basename(dirs[0]) / "source.json").is_file()
    assert not list(entry.glob(".building-*"))  # no half-built directory left behind
    assert [p.name for p in entry.iterdir()] == [os.path.basename(dirs[0])]
