"""core.message's text: any bytes read, written back exactly, and spelled out for Kamailio."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cpmiw.core.message import decode, encode, escape_bytes, escape_uri_bytes, is_plain


@given(st.binary(max_size=200))
def test_any_bytes_are_written_back_exactly(data: bytes) -> None:
    assert encode(decode(data)) == data


@given(st.binary(max_size=200))
def test_escaped_text_is_plain_and_keeps_every_utf8_character(data: bytes) -> None:
    text = decode(data)
    escaped = escape_bytes(text)
    assert is_plain(escaped)
    escaped.encode("utf-8")  # what app_python3 does with a str
    if is_plain(text):
        assert escaped == text


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(b"abc@h", "abc@h", id="ascii"),
        pytest.param("José".encode(), "José", id="utf8"),
        pytest.param(b"Jos\xe9", "Jos\\xe9", id="latin1"),
        pytest.param(b"a\x00b", "a\\x00b", id="nul"),
        pytest.param(b"\xd0@red", "\\xd0@red", id="truncated-utf8"),
    ],
)
def test_escape_bytes(data: bytes, expected: str) -> None:
    assert escape_bytes(decode(data)) == expected


def test_escape_uri_bytes() -> None:
    assert escape_uri_bytes(decode(b"sip:us\xe9r\x00@h")) == "sip:us%E9r%00@h"
    assert escape_uri_bytes("sip:José@h") == "sip:José@h"
