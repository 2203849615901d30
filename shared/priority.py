"""Priority bands and fair-share lanes: which queue of its model a job waits in (docs/scheduling.md).

A model has one rq queue per (band, lane). Slots take from the bands in order (strict priority) and
round robin across a band's lanes; a client's key always hashes to the same lane, so one key's
flood fills one lane while the others keep their turn.
"""

from __future__ import annotations

import hashlib
from typing import Literal

#: The bands, most urgent first: a slot takes a job of a band only when every band before it is empty.
Band = Literal["high", "normal", "low", "batch"]
BANDS: tuple[Band, ...] = ("high", "normal", "low", "batch")
DEFAULT_BAND: Band = "normal"

#: Lanes per band. A constant, not a setting: API and workers must agree on it, or jobs in a lane
#: no worker listens to would wait forever. Two keys share a lane with probability 1/LANES.
#: One for now: with 8 (32 queues per model) the suite's dispatch and crash-recovery tests failed
#: and ran twice as long; fair share waits for a design that costs less per queue (issue 14).
LANES_PER_BAND = 1

#: OpenAI's ``service_tier`` values and their band (``scale`` and ``fast`` are served as default).
SERVICE_TIERS: dict[str, Band] = {
    "priority": "high",
    "default": "normal",
    "auto": "normal",
    "scale": "normal",
    "fast": "normal",
    "flex": "low",
}

#: vLLM's integer ``priority`` (lower is sooner): below 0 high, 0 normal, 1 to 9 low, 10 and up batch.
BATCH_PRIORITY = 10


def band_of_priority(priority: int) -> Band:
    """The band of vLLM's integer ``priority``."""
    if priority < 0:
        return "high"
    if priority == 0:
        return "normal"
    return "low" if priority < BATCH_PRIORITY else "batch"


def band_index(band: Band) -> int:
    """0 for the most urgent band."""
    return BANDS.index(band)


def lane_of(subject: str | None) -> int:
    """The lane of a client (its hashed API key or address): stable across processes and restarts."""
    if not subject:
        return 0
    return int.from_bytes(hashlib.sha256(subject.encode()).digest()[:4], "big") % LANES_PER_BAND


def clamp(band: Band, may_ask_high: bool) -> Band:
    """The band a client gets: ``high`` only for the keys allowed it (``normal`` for the others)."""
    return DEFAULT_BAND if band == "high" and not may_ask_high else band
