"""The pure parts of priority scheduling: band of a priority or a word, the high-band clamp, and
``MODELYARD_PRIORITY_AGING_S`` read from the environment (docs/scheduling.md)."""

import pytest

from api.priority import band_of_word
from shared.config import Settings
from shared.errors import InvalidRequest
from shared.priority import BATCH_PRIORITY, band_of_priority, clamp


@pytest.mark.parametrize(
    ("priority", "band"),
    [
        (-(2**63), "high"),
        (-1, "high"),
        (0, "normal"),
        (1, "low"),
        (BATCH_PRIORITY - 1, "low"),
        (BATCH_PRIORITY, "batch"),
        (2**63 - 1, "batch"),
    ],
)
def test_band_of_vllm_priority(priority: int, band: str) -> None:
    assert band_of_priority(priority) == band


@pytest.mark.parametrize(
    ("word", "band"),
    [
        (" HIGH ", "high"),
        ("priority", "high"),
        ("-3", "high"),
        ("default", "normal"),
        ("scale", "normal"),
        ("0", "normal"),
        ("flex", "low"),
        ("7", "low"),
        ("Batch", "batch"),
        ("10", "batch"),
    ],
)
def test_band_of_a_header_word(word: str, band: str) -> None:
    assert band_of_word(word, "X-Priority") == band


def test_a_header_word_that_names_no_band_is_refused_naming_the_header() -> None:
    with pytest.raises(InvalidRequest) as refused:
        band_of_word("urgent", "X-Priority")
    assert refused.value.param == "X-Priority"


@pytest.mark.parametrize("band", ["normal", "low", "batch"])
def test_clamp_leaves_every_band_but_high_alone(band: str) -> None:
    assert clamp(band, may_ask_high=False) == band
    assert clamp(band, may_ask_high=True) == band


def test_clamp_serves_high_in_normal_unless_allowed() -> None:
    assert clamp("high", may_ask_high=False) == "normal"
    assert clamp("high", may_ask_high=True) == "high"


@pytest.mark.parametrize("raw", ["0", "0.0", "off", "OFF", " none ", "None"])
def test_aging_switched_off_from_the_environment(raw: str) -> None:
    assert Settings.from_env({"MODELYARD_PRIORITY_AGING_S": raw}).priority_aging_s is None


@pytest.mark.parametrize(("raw", "seconds"), [("", 30.0), ("12.5", 12.5), ("1", 1.0)])
def test_aging_seconds_from_the_environment(raw: str, seconds: float) -> None:
    assert Settings.from_env({"MODELYARD_PRIORITY_AGING_S": raw}).priority_aging_s == seconds


@pytest.mark.parametrize("raw", ["-1", "soon"])
def test_aging_that_is_neither_seconds_nor_off_is_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="priority_aging_s"):
        Settings.from_env({"MODELYARD_PRIORITY_AGING_S": raw})


def test_high_keys_from_the_environment() -> None:
    settings = Settings.from_env({"MODELYARD_PRIORITY_HIGH_KEYS": " k1, ,k2 "})
    assert settings.priority_high_keys == ("k1", "k2")
