"""R-E4 / R-H1: the audit trail's event time, formatted per second and kept (cheap on the
request path), is the text ``datetime.fromtimestamp(...).strftime`` gives, rounding and
carry included."""
from __future__ import annotations

import datetime as dt
import random

from pacsd.services.audit import iso_utc


def _reference(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_R_H1_iso_utc_equals_datetime_formatting():
    r = random.Random(7)
    edges = [0.0, -0.5, 1e9 + 0.5e-6, 1700000000.9999995, 1700000000.9999996,
             1700000000.0000005, 1700000000.0000015, 1764288000.9999999, 4102444799.9999999]
    for ts in edges + [r.uniform(0, 4.1e9) for _ in range(20000)]:
        assert iso_utc(ts) == _reference(ts), ts
    # the same second twice, then the next: the kept text follows
    assert iso_utc(1764288000.25) == "2025-11-28T00:00:00.250000Z"
    assert iso_utc(1764288000.5) == "2025-11-28T00:00:00.500000Z"
    assert iso_utc(1764288001.0) == "2025-11-28T00:00:01.000000Z"
