"""The rooms of `workbench` import only downward (see ARCHITECTURE.md): read every import, lazy ones too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "workbench"

# Room -> floor. A room may import its own modules and rooms on lower floors, nothing else.
FLOORS = {
    "errors": 0, "io": 0, "settings": 0,
    "corpus": 1, "formats": 1,
    "config": 2, "tokenizer": 2,
    "model": 3,
    "kernels": 4,
    "quant": 5, "engine": 5, "eval": 5,
    "checkpoints": 6,
    "prune": 7,
    "distill": 8,
    "adapters": 9, "variant": 9,
    "bench": 10,
    "serve": 11, "parallel": 11, "evals": 11, "interop": 11, "study": 11, "verify": 11,
    "cli": 12, "lab": 12, "exercises": 12,
    "__main__": 13,
}
FACADE = "__init__"  # workbench/__init__.py re-exports the main entry points; nothing inside imports it


def room_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else FACADE


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import of a workbench module in `path`."""
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    here = list(rel.parts) if path.name == "__init__.py" else list(rel.parts[:-1])
    if path.name == "__init__.py":
        here = here[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "workbench"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "workbench":
                continue
            if module == "workbench":  # `from .. import kernels`: the names are rooms
                found += [(node.lineno, f"workbench.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, module))
    return found


def upward_imports() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = room_of(".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts))
        if source == FACADE:
            continue
        assert source in FLOORS, f"{path}: room {source!r} has no floor in FLOORS (add it to ARCHITECTURE.md too)"
        for line, module in imports_of(path):
            target = room_of(module)
            if target == source:
                continue
            if target == FACADE or target not in FLOORS or FLOORS[target] >= FLOORS[source]:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {source} (floor {FLOORS[source]}) imports "
                           f"{module} (floor {FLOORS.get(target, '?')})")
    return bad


def test_rooms_import_only_downward():
    bad = upward_imports()
    assert not bad, "imports that go up or sideways:\n" + "\n".join(bad)


def test_the_check_sees_relative_and_lazy_imports(tmp_path, monkeypatch):
    """The reader must catch an upward import written relatively, inside a function."""
    fake = tmp_path / "workbench"
    (fake / "quant").mkdir(parents=True)
    (fake / "quant" / "bad.py").write_text("def f():\n    from ..checkpoints import load_model\n")
    (fake / "quant" / "good.py").write_text("from ..errors import WorkbenchError\nfrom . import bad\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert upward_imports() == ["workbench/quant/bad.py:2: quant (floor 5) imports workbench.checkpoints (floor 6)"]


def test_architecture_md_names_every_room():
    text = (PACKAGE.parent / "ARCHITECTURE.md").read_text()
    rooms = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir()
             if (p.suffix == ".py" or (p / "__init__.py").is_file()) and p.stem != "__init__"}
    missing = sorted(r for r in rooms if f"`{r}" not in text)
    assert not missing, f"rooms missing from ARCHITECTURE.md: {missing}"


def test_no_machine_paths_in_tracked_files():
    """Results, notebooks and docs name no path of the machine that wrote them (a cache root, a home,
    a temporary directory): a reader elsewhere has none of them."""
    import re
    import subprocess

    root = PACKAGE.parent
    listed = subprocess.run(["git", "ls-files"], cwd=root, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    pattern = re.compile(r"(?<![\w.$])/(?:root|home/\w+|tmp|work)/")
    bad = []
    for name in listed.stdout.split():
        path = root / name
        if name.startswith("tests/") or path.suffix not in {".py", ".md", ".ipynb", ".json", ".csv", ".txt", ".toml"}:
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if pattern.search(line):
                bad.append(f"{name}:{number}: {line.strip()[:120]}")
    assert not bad, "machine paths in tracked files:\n" + "\n".join(bad[:20])
