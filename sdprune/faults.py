"""Test-only fault injection: SIGKILL this process at a named point of its work.

The crash tests (``tests/train/test_crash.py``) start `sdprune train` with
``SDPRUNE_TEST_KILL_AT=POINT[@N]`` to kill it the N-th time (default the first) it reaches
POINT, which is one of:

- ``write:<file name>``: inside ``atomic_write``, the new file complete under its
  temporary name but not yet renamed into place (e.g. ``write:checkpoint.pt@2``);
- ``epoch-saved``: after an epoch's checkpoint was written and before its metrics line.

Unset (always, outside those tests), ``reached`` costs one environment lookup.
"""

from __future__ import annotations

import os
import signal

ENV = "SDPRUNE_TEST_KILL_AT"
_seen: dict[str, int] = {}


def reached(point: str) -> None:
    """Die here, by SIGKILL, if ``SDPRUNE_TEST_KILL_AT`` names this point and visit."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, visit = spec.partition("@")
    if name != point:
        return
    _seen[point] = _seen.get(point, 0) + 1
    if _seen[point] == int(visit or 1):
        os.kill(os.getpid(), signal.SIGKILL)
