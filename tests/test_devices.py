"""Registered devices (core/devices.py): what a REGISTER's contacts say, the per-AOR summary."""

from __future__ import annotations

import pytest

from cpmiw.core.devices import (
    Device,
    next_expiry,
    registered,
    registered_contacts,
    summary,
    usrloc_key,
)
from cpmiw.core.services import Family

CPM, IM, SMS = Family.CPM, Family.IM, Family.SMS
ICSI = '+g.3gpp.icsi-ref="urn%3Aurn-7%3A3gpp-service.ims.icsi.oma.cpm.msg"'


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


def test_a_register_keeps_each_contacts_feature_parameters_as_written() -> None:
    header = (
        f'"Bob" <sip:bob@192.0.2.7:5060;transport=tcp>;{ICSI};expires=600;q=0.5;+g.oma.sip-im,'
        " sip:bob@192.0.2.8;+g.3gpp.smsip;video;reg-id=1;"
        ' +sip.instance="<urn:gsma:imei:1234>", <sip:bob@192.0.2.9>'
    )
    assert registered_contacts(header) == [
        ("sip:bob@192.0.2.7:5060;transport=tcp", f";{ICSI};+g.oma.sip-im"),
        ("sip:bob@192.0.2.8", ';+g.3gpp.smsip;video; +sip.instance="<urn:gsma:imei:1234>"'),
        ("sip:bob@192.0.2.9", ""),
    ]
    assert registered_contacts("*") == []


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        pytest.param('"Jos\udce9" <sip:a@h>;+g.oma.sip-im', [("sip:a@h", ";+g.oma.sip-im")],
                     id="latin1-display-name"),
        pytest.param('"Dave, \\"the\\" <phone>" <sip:a@h>;+g.3gpp.smsip, sip:b@h;+g.oma.sip-im',
                     [("sip:a@h", ";+g.3gpp.smsip"), ("sip:b@h", ";+g.oma.sip-im")],
                     id="two-entries"),
    ],
)  # fmt: skip
def test_display_names_are_no_contacts(header: str, expected: list[tuple[str, str]]) -> None:
    assert registered_contacts(header) == expected


def test_quoted_line_breaks_do_not_break_the_summary_into_lines() -> None:
    [(_, features)] = registered_contacts('<sip:a@192.0.2.1>;+x.note="one\ttwo\r\n three"')
    assert features == ';+x.note="one two three"'


@pytest.mark.parametrize(
    ("features", "families"),
    [
        (f";{ICSI}", {CPM}),
        (";+g.oma.sip-im.large-message", {IM}),
        (f";{ICSI};+g.3gpp.smsip", {CPM, SMS}),
        (';video;+sip.instance="<urn:uuid:1>"', set()),
    ],
)
def test_a_device_takes_the_families_its_tags_name(features: str, families: set[Family]) -> None:
    assert Device("sip:a@192.0.2.1", features=features).families == families


def test_a_summary_reads_back_the_devices_still_registered() -> None:
    phone = Device("sip:a@192.0.2.1", 1000, f";{ICSI};+g.3gpp.smsip", 1000)
    tablet = Device("sip:a@192.0.2.2;transport=tcp", 500, ";+g.oma.sip-im", 2000)
    fixed = Device("sip:a@192.0.2.3", 0, "", 0)
    text = summary([phone, tablet, fixed])
    assert registered(text, 999.0) == [phone, tablet, fixed]
    assert registered(text, 1000.0) == [tablet, fixed]  # expired at 1000
    assert registered(text, 10**10) == [fixed]  # 0: never expires
    assert registered(text, 0.0)[0].families == {CPM, SMS}


def test_no_devices_is_an_empty_summary() -> None:
    assert registered(summary([]), 0.0) == []


@pytest.mark.parametrize("text", ["soon 1000 sip:a@h ", "1000:cpm", "1000 high sip:a@h "])
def test_a_text_that_is_no_summary_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid literal|not enough values"):
        registered(text, 0.0)


def test_the_next_expiry_is_the_earliest_contact_still_registered() -> None:
    def at(*expiries: int) -> str:
        return summary([Device(f"sip:a@192.0.2.{n}", expires=e) for n, e in enumerate(expiries)])

    assert next_expiry(at(100, 300, 0), 150.0) == 300
    assert next_expiry(at(0), 150.0) is None
    assert next_expiry(at(100), 150.0) is None
