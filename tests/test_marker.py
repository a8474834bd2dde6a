"""cpmiw.marker: the signed "coming back from the AS" marker."""

from __future__ import annotations

import re

import pytest

from cpmiw.core.marker import binding, issue, verify

SECRET = b"0123456789abcdef0123456789abcdef"
CALL_ID = "a84b4c76e66710@pc33.example.net"
BOUND = binding(CALL_ID, "314159", "INVITE")
NOW = 1_700_000_000.75
TTL = 32
MARKER = issue(SECRET, BOUND, NOW, TTL)


def test_format_fits_a_uri_parameter() -> None:
    assert re.fullmatch(rf"{int(NOW) + TTL}\.[A-Za-z0-9_-]{{22}}", MARKER)


@pytest.mark.parametrize(
    "now", [NOW - 5, NOW, int(NOW) + TTL], ids=["before", "now", "last-second"]
)
def test_issued_marker_verifies(now: float) -> None:
    assert verify(SECRET, MARKER, BOUND, now)


def test_method_case_does_not_matter() -> None:
    assert binding("c@h", "1", "invite") == binding("c@h", "1", "INVITE")


def _tamper(text: str, index: int) -> str:
    return text[:index] + ("A" if text[index] != "A" else "B") + text[index + 1 :]


@pytest.mark.parametrize(
    ("secret", "marker", "bound_to", "now"),
    [
        pytest.param(SECRET, MARKER, binding("other@pc33.example.net", "314159", "INVITE"), NOW,
                     id="other-call-id"),
        pytest.param(SECRET, MARKER, binding(CALL_ID, "314160", "INVITE"), NOW, id="other-cseq"),
        pytest.param(SECRET, MARKER, binding(CALL_ID, "314159", "MESSAGE"), NOW, id="other-method"),
        pytest.param(b"another secret", MARKER, BOUND, NOW, id="other-secret"),
        pytest.param(SECRET, MARKER, BOUND, int(NOW) + TTL + 1, id="expired"),
        pytest.param(SECRET, _tamper(MARKER, -1), BOUND, NOW, id="tampered-mac-last"),
        pytest.param(SECRET, _tamper(MARKER, -22), BOUND, NOW, id="tampered-mac-first"),
        pytest.param(SECRET, MARKER[:-1], BOUND, NOW, id="truncated-mac"),
        pytest.param(SECRET, MARKER + "A", BOUND, NOW, id="extended-mac"),
        pytest.param(SECRET, f"{int(NOW) + 3600}.{MARKER.split('.')[1]}", BOUND, NOW,
                     id="extended-expiry"),
        pytest.param(SECRET, MARKER.replace(".", ":"), BOUND, NOW, id="wrong-separator"),
        pytest.param(SECRET, "", BOUND, NOW, id="empty"),
        pytest.param(SECRET, ".", BOUND, NOW, id="dot"),
        pytest.param(SECRET, "garbage", BOUND, NOW, id="garbage"),
        pytest.param(SECRET, f"{int(NOW) + 10}", BOUND, NOW, id="expiry-only"),
        pytest.param(SECRET, f"{int(NOW) + 10}.", BOUND, NOW, id="empty-mac"),
        pytest.param(SECRET, f"-{int(NOW) + 10}.x", BOUND, NOW, id="negative-expiry"),
        pytest.param(SECRET, f" {MARKER}", BOUND, NOW, id="leading-space"),
        pytest.param(SECRET, "1e12.x", BOUND, NOW, id="exponent-expiry"),
        pytest.param(SECRET, "٩٩٩٩٩٩٩٩٩٩.x", BOUND, NOW, id="arabic-indic-digits"),
        pytest.param(SECRET, "².x", BOUND, NOW, id="superscript-digit"),
        pytest.param(SECRET, "9" * 5000 + ".x", BOUND, NOW, id="huge-expiry"),
        pytest.param(SECRET, f"{int(NOW) + 10}.é", BOUND, NOW, id="non-ascii-mac"),
    ],
)  # fmt: skip
def test_marker_does_not_verify(secret: bytes, marker: str, bound_to: str, now: float) -> None:
    assert verify(secret, marker, bound_to, now) is False
