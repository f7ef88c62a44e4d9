"""One switch for CI speed: WORKBENCH_QUICK=1 shrinks token counts and steps (never the model)."""

import os


def quick_mode() -> bool:
    return os.environ.get("WORKBENCH_QUICK", "0").lower() not in ("", "0", "false", "no")


def pick(quick, full):
    """`quick` in quick mode, else `full`: notebooks size their experiments with this."""
    return quick if quick_mode() else full
