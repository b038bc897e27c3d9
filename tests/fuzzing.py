"""Hypothesis settings for the parser fuzz tests: seeded (the same examples on every run, so CI
is reproducible), no per-example deadline (a busy 2-core machine), and example counts sized so
each parser's test stays within a few seconds."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

__all__ = ["fuzz"]

settings.register_profile(
    "prunelab-fuzz", derandomize=True, deadline=None, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def fuzz(max_examples: int) -> settings:
    """The fuzz profile with ``max_examples`` examples."""
    return settings(settings.get_profile("prunelab-fuzz"), max_examples=max_examples)
