"""Instants for tests, and when each kind may be used.

pushrec's code takes `now` as a parameter, so a test may pass any instant it likes, and a
fixed one (`FIXED_NOW`) keeps assertions readable. That holds only while no real clock
takes part. One does wherever the test's instants reach:

- Redis expiries set at an absolute time (`EXPIREAT`: the trending buckets), which Redis
  compares with its own clock;
- stream ids made by `XADD *`, Celery ETAs, the scheduler and worker processes, which
  stamp with `time.time()`;
- certificates and JWTs, checked against the verifier's clock;
- the checks against the real time of the run (`PUSHREC_FUTURE_SKEW_S`,
  `PUSHREC_TRIGGER_MAX_AGE_S`, a CLI command that reads the clock).

Such a test takes `RUN_NOW`, the real time at which the test session began (to the whole
second), and offsets from it, so it passes on any date and under a shifted clock
(`faketime -f '+400d' make test`). Expiries relative to the moment of the write (`EXPIRE`
with a TTL) do not meet the clock in this sense.
"""

from __future__ import annotations

import time

FIXED_NOW = 1_795_856_400.0  # 2026-11-28T09:00:00Z, a Saturday
"""For code that never meets a real clock: parsing, scoring, quiet-hour arithmetic."""

RUN_NOW = float(int(time.time()))
"""The real time at which the test session imported this module, in whole seconds."""
