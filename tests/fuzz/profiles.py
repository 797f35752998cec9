"""Hypothesis settings profiles of the fuzz targets: "ci" (the default) and "long".

* ``ci``: a few hundred examples per target, derandomized (the same inputs every run),
  no deadline; seconds in all. Used unless another profile is chosen.
* ``long``: 200,000 examples per target, random, no deadline; by hand, for minutes to
  hours: ``python -m pytest tests/fuzz --hypothesis-profile=long``.

They are registered by ``tests/fuzz/conftest.py`` at import, which pytest does before it
reads ``--hypothesis-profile`` when ``tests/fuzz`` (or a file in it) is on the command
line. The targets apply the chosen profile to themselves only (`fuzz_settings`), so
selecting "ci" never changes the settings of the other hypothesis tests in a run.
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

CI = "ci"
LONG = "long"

settings.register_profile(
    CI, max_examples=300, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    LONG, max_examples=200_000, deadline=None, derandomize=False, print_blob=True,
    suppress_health_check=list(HealthCheck),
)


def fuzz_settings() -> settings:
    """The settings for a fuzz target: "long" when that profile was chosen, else "ci"."""
    chosen = settings.get_current_profile_name()
    return settings.get_profile(LONG if chosen == LONG else CI)
