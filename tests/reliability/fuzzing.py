"""What the fuzz tests share: hypothesis settings (derandomised, so every CI run tries the same
inputs and docs/reliability.md can give the counts) and the accepted outcomes of a bad input."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

from selfinterp_plugins.errors import SelfInterpError

EXAMPLES = 60
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def outcome(fn):
    """Run fn; a SelfInterpError is an acceptable outcome, and its message must say something."""
    try:
        return fn()
    except SelfInterpError as err:
        assert len(str(err)) > 20, f"unhelpful message: {err!r}"
        return err
