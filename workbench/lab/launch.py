"""Start JupyterLab on the notebooks, wherever a learner runs it, and say where it listens.

`make lab` runs this. As root (containers, cloud notebooks) Jupyter refuses to start without
`--allow-root`, so it is added there. The access token is chosen here and the URL printed first,
before Jupyter's own log, so it is easy to find (and a test can reach the server).

    python -m workbench.lab.launch [NOTEBOOK_DIR] [--port N] [--no-browser] [other jupyter lab flags]
"""

from __future__ import annotations

import os
import secrets
import sys


def lab_command(notebook_dir: str, port: int, token: str, extra: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "jupyterlab", f"--notebook-dir={notebook_dir}", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    return cmd + extra


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    port = 8888
    if "--port" in args:
        i = args.index("--port")
        port = int(args[i + 1])
        del args[i:i + 2]
    notebook_dir = args.pop(0) if args and not args[0].startswith("-") else "notebooks"
    token = os.environ.get("WORKBENCH_LAB_TOKEN") or secrets.token_hex(16)
    cmd = lab_command(notebook_dir, port, token, args)
    print(f"JupyterLab: http://127.0.0.1:{port}/lab?token={token}", flush=True)
    os.execv(cmd[0], cmd)  # Jupyter takes over this process: Ctrl-C stops it as usual


if __name__ == "__main__":
    sys.exit(main())
