"""cpmiw.core.marker: the signed "coming back from the AS" marker."""

from __future__ import annotations

import re

import pytest

from cpmiw.core.marker import NONCE_BYTES, binding, issue, nonce_of, verify

SECRET = b"0123456789abcdef0123456789abcdef"
PREVIOUS = b"fedcba9876543210fedcba9876543210"
CALL_ID = "a84b4c76e66710@pc33.example.net"
BOUND = binding(CALL_ID, "314159", "INVITE")
NOW = 1_700_000_000.75
TTL = 32
NONCE = bytes(range(NONCE_BYTES))
MARKER = issue(SECRET, BOUND, NOW, TTL, NONCE)
EXPIRY, NONCE_TEXT, MAC = MARKER.split(".")


def test_format_fits_a_uri_parameter() -> None:
    assert re.fullmatch(rf"{int(NOW) + TTL}\.[A-Za-z0-9_-]{{11}}\.[A-Za-z0-9_-]{{22}}", MARKER)


@pytest.mark.parametrize(
    "now", [NOW - 5, NOW, int(NOW) + TTL], ids=["before", "now", "last-second"]
)
def test_issued_marker_verifies(now: float) -> None:
    assert verify([SECRET], MARKER, BOUND, now)


def test_the_same_request_gets_a_new_marker_each_time() -> None:
    """Two hand-offs of one request within a second: two markers, each honoured once."""
    again = issue(SECRET, BOUND, NOW, TTL, b"\xff" * NONCE_BYTES)
    assert again != MARKER and nonce_of(again) != nonce_of(MARKER)
    assert verify([SECRET], again, BOUND, NOW)
    assert nonce_of(MARKER) == NONCE_TEXT


def test_previous_secret_is_accepted_during_a_rotation() -> None:
    issued_before = issue(PREVIOUS, BOUND, NOW, TTL, NONCE)
    assert verify([SECRET, PREVIOUS], issued_before, BOUND, NOW)
    assert verify([SECRET, PREVIOUS], MARKER, BOUND, NOW)
    assert not verify([SECRET], issued_before, BOUND, NOW)  # the rotation is over


def test_method_case_does_not_matter() -> None:
    assert binding("c@h", "1", "invite") == binding("c@h", "1", "INVITE")


def _tamper(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


@pytest.mark.parametrize(
    ("secrets", "marker", "bound_to", "now"),
    [
        pytest.param([SECRET], MARKER, binding("other@pc33.example.net", "314159", "INVITE"), NOW,
                     id="other-call-id"),
        pytest.param([SECRET], MARKER, binding(CALL_ID, "314160", "INVITE"), NOW, id="other-cseq"),
        pytest.param([SECRET], MARKER, binding(CALL_ID, "314159", "MESSAGE"), NOW,
                     id="other-method"),
        pytest.param([b"another secret"], MARKER, BOUND, NOW, id="other-secret"),
        pytest.param([], MARKER, BOUND, NOW, id="no-secret"),
        pytest.param([SECRET], MARKER, BOUND, int(NOW) + TTL + 1, id="expired"),
        pytest.param([SECRET], _tamper(MARKER, -1), BOUND, NOW, id="tampered-mac-last"),
        pytest.param([SECRET], _tamper(MARKER, -22), BOUND, NOW, id="tampered-mac-first"),
        pytest.param([SECRET], f"{EXPIRY}.{_tamper(NONCE_TEXT, 0)}.{MAC}", BOUND, NOW,
                     id="other-nonce"),
        pytest.param([SECRET], f"{EXPIRY}.{NONCE_TEXT}A.{MAC}", BOUND, NOW, id="long-nonce"),
        pytest.param([SECRET], f"{EXPIRY}..{MAC}", BOUND, NOW, id="no-nonce"),
        pytest.param([SECRET], f"{EXPIRY}.{MAC}", BOUND, NOW, id="nonce-missing"),
        pytest.param([SECRET], MARKER[:-1], BOUND, NOW, id="truncated-mac"),
        pytest.param([SECRET], MARKER + "A", BOUND, NOW, id="extended-mac"),
        pytest.param([SECRET], f"{int(NOW) + 3600}.{NONCE_TEXT}.{MAC}", BOUND, NOW,
                     id="extended-expiry"),
        pytest.param([SECRET], MARKER.replace(".", ":"), BOUND, NOW, id="wrong-separator"),
        pytest.param([SECRET], "", BOUND, NOW, id="empty"),
        pytest.param([SECRET], "..", BOUND, NOW, id="dots"),
        pytest.param([SECRET], "garbage", BOUND, NOW, id="garbage"),
        pytest.param([SECRET], f"{int(NOW) + 10}", BOUND, NOW, id="expiry-only"),
        pytest.param([SECRET], f"{int(NOW) + 10}.{NONCE_TEXT}.", BOUND, NOW, id="empty-mac"),
        pytest.param([SECRET], f"-{int(NOW) + 10}.{NONCE_TEXT}.x", BOUND, NOW,
                     id="negative-expiry"),
        pytest.param([SECRET], f" {MARKER}", BOUND, NOW, id="leading-space"),
        pytest.param([SECRET], f"1e12.{NONCE_TEXT}.x", BOUND, NOW, id="exponent-expiry"),
        pytest.param([SECRET], f"٩٩٩٩٩٩٩٩٩٩.{NONCE_TEXT}.x", BOUND, NOW,
                     id="arabic-indic-digits"),
        pytest.param([SECRET], f"².{NONCE_TEXT}.x", BOUND, NOW, id="superscript-digit"),
        pytest.param([SECRET], "9" * 5000 + f".{NONCE_TEXT}.x", BOUND, NOW, id="huge-expiry"),
        pytest.param([SECRET], f"{int(NOW) + 10}.{NONCE_TEXT}.é", BOUND, NOW,
                     id="non-ascii-mac"),
        pytest.param([SECRET], f"{int(NOW) + 10}.ééééééééééé.{MAC}", BOUND, NOW,
                     id="non-ascii-nonce"),
    ],
)  # fmt: skip
def test_marker_does_not_verify(
    secrets: list[bytes], marker: str, bound_to: str, now: float
) -> None:
    assert verify(secrets, marker, bound_to, now) is False
