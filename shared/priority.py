"""Priority bands and fair-share lanes: which queue of its model a job waits in (docs/scheduling.md).

A model has one rq queue per (band, lane). Slots take from the bands in order (strict priority) and
round robin across a band's lanes; a client's key always hashes to the same lane, so one key's
flood fills one lane while the others keep their turn.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Literal

#: The bands, most urgent first: a slot takes a job of a band only when every band before it is empty.
Band = Literal["high", "normal", "low", "batch"]
BANDS: tuple[Band, ...] = ("high", "normal", "low", "batch")
DEFAULT_BAND: Band = "normal"

#: Most lanes per band ``MODELYARD_PRIORITY_LANES`` may ask for.
MAX_LANES = 64
#: Lanes per band, when ``MODELYARD_PRIORITY_LANES`` is unset.
DEFAULT_LANES = 4


def lanes_from_env(environ: Mapping[str, str] | None = None) -> int:
    """``MODELYARD_PRIORITY_LANES`` (1 to :data:`MAX_LANES`; default :data:`DEFAULT_LANES`)."""
    env = os.environ if environ is None else environ
    raw = env.get("MODELYARD_PRIORITY_LANES") or str(DEFAULT_LANES)
    try:
        lanes = int(raw)
    except ValueError:
        lanes = 0
    if not 1 <= lanes <= MAX_LANES:
        raise ValueError(f"MODELYARD_PRIORITY_LANES={raw!r}: an integer from 1 to {MAX_LANES}")
    return lanes


#: Lanes per band (``MODELYARD_PRIORITY_LANES``). Read once per process, from the environment, as
#: the key prefix is: the API and every worker of a deployment must have the same value, or jobs in
#: a lane no worker listens to would wait until their deadline. Two keys share a lane with
#: probability 1/LANES; one lane turns fair share off.
LANES_PER_BAND = lanes_from_env()

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


def lane_of(subject: str | None, lanes: int | None = None) -> int:
    """The lane of a client (its hashed API key or address) among ``lanes`` (default: this
    process's :data:`LANES_PER_BAND`): stable across processes and restarts."""
    if not subject:
        return 0
    return int.from_bytes(hashlib.sha256(subject.encode()).digest()[:4], "big") % (lanes or LANES_PER_BAND)


def clamp(band: Band, may_ask_high: bool) -> Band:
    """The band a client gets: ``high`` only for the keys allowed it (``normal`` for the others)."""
    return DEFAULT_BAND if band == "high" and not may_ask_high else band
