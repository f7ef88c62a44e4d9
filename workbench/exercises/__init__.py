"""Exercise checks for the notebooks: one module per notebook, named after its topic.

A learner computes or writes something in a notebook and calls the module's check on it; the check
returns a `Verdict` that says what is right or what is wrong. Each module lists its exercises in
`EXERCISES`, with a reference solution and wrong answers the check must reject, so the tests prove
every check works without the notebooks holding the answers.
"""

from .checking import Exercise, Verdict, expect_close, expect_equal, not_answered

__all__ = ["Exercise", "Verdict", "expect_close", "expect_equal", "not_answered"]
