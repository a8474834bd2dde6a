"""The per-AOR summary of registered devices (devices.py): pure, no Kamailio."""

from __future__ import annotations

import pytest

from cpmiw.core.devices import next_expiry, registered, summary, usrloc_key
from cpmiw.core.services import Family

CPM, IM, SMS = Family.CPM, Family.IM, Family.SMS


@pytest.mark.parametrize(
    ("aor", "key"),
    [
        ("sip:alice@ims.example.net", "alice@ims.example.net"),
        ("<sip:alice@IMS.Example.NET:5060;transport=udp>", "alice@ims.example.net"),
        ("sip:+15551230001@ims.example.net;user=phone", "+15551230001@ims.example.net"),
        ("sip:Alice@ims.example.net?subject=x", "Alice@ims.example.net"),  # users keep their case
        ("sip:ims.example.net", "ims.example.net"),
    ],
)
def test_usrloc_key_is_how_usrloc_files_an_aor(aor: str, key: str) -> None:
    assert usrloc_key(aor) == key


def test_a_summary_reads_back_the_devices_still_registered() -> None:
    text = summary([(1000, frozenset({CPM, SMS})), (2000, frozenset({IM})), (0, frozenset())])
    assert text == "1000:cpm,sms 2000:im 0:"
    assert registered(text, 999.0) == [frozenset({CPM, SMS}), frozenset({IM}), frozenset()]
    assert registered(text, 1000.0) == [frozenset({IM}), frozenset()]  # expired at 1000
    assert registered(text, 10**10) == [frozenset()]  # 0: never expires


def test_no_devices_is_an_empty_summary() -> None:
    assert registered(summary([]), 0.0) == []


@pytest.mark.parametrize("text", ["soon:cpm", "1000:fax", "1000:cpm 2000"])
def test_a_text_that_is_no_summary_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid literal|not a valid Family|not expires:"):
        registered(text, 0.0)


def test_the_next_expiry_is_the_earliest_contact_still_registered() -> None:
    assert next_expiry("100:cpm 300:im 0:sms", 150.0) == 300
    assert next_expiry("0:cpm", 150.0) is None
    assert next_expiry("100:cpm", 150.0) is None
