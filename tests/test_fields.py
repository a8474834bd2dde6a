"""cpmiw.fields: header entries and parameters, found with their positions in the value."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cpmiw.core.fields import Span, address_uri, entries, params, replace_spans, unquote_list

# Text made mostly of the characters the lexer cares about, plus arbitrary text.
SIPISH = st.text(alphabet=' ,;="<>\\ab+.', max_size=40) | st.text(max_size=40)


def assert_indexes(value: str, span: Span) -> None:
    assert value[span.start : span.end] == span.text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("a, b ,, c ", ["a", "b", "c"], id="trimmed-empty-dropped"),
        pytest.param("", [], id="empty"),
        pytest.param(" , ,\t", [], id="only-separators"),
        pytest.param(
            '"Bob, Jr" <sip:bob@h>;q=1, *', ['"Bob, Jr" <sip:bob@h>;q=1', "*"], id="quoted-comma"
        ),
        pytest.param(
            "<sip:a@h;x=1,2>;p, <sip:b@h>", ["<sip:a@h;x=1,2>;p", "<sip:b@h>"], id="uri-comma"
        ),
        pytest.param('*;x="a\\",b", y', ['*;x="a\\",b"', "y"], id="escaped-quote"),
        pytest.param('*;x="a\\\\", y', ['*;x="a\\\\"', "y"], id="escaped-backslash"),
        pytest.param('*;x="never, closed', ['*;x="never, closed'], id="unterminated-quote"),
    ],
)
def test_entries(value: str, expected: list[str]) -> None:
    found = entries(value)
    assert [span.text for span in found] == expected
    for span in found:
        assert_indexes(value, span)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(
            '*;+g.3gpp.icsi-ref="urn%3Aa,urn%3Ab";require;explicit',
            [
                ("+g.3gpp.icsi-ref", '"urn%3Aa,urn%3Ab"', ';+g.3gpp.icsi-ref="urn%3Aa,urn%3Ab"'),
                ("require", None, ";require"),
                ("explicit", None, ";explicit"),
            ],
            id="quoted-list-and-flags",
        ),
        pytest.param(
            "<sip:a@h;lr;x=1,2>;expires=600",
            [("expires", "600", ";expires=600")],
            id="uri-params-not-entry-params",
        ),
        pytest.param(
            "*; +G.OMA.SIP-IM ;Q = 0.5;X=AbC ",
            [
                ("+g.oma.sip-im", None, "; +G.OMA.SIP-IM"),
                ("q", "0.5", ";Q = 0.5"),
                ("x", "AbC", ";X=AbC"),
            ],
            id="name-lowered-value-as-written",
        ),
        pytest.param(
            '"x;y" <sip:a@h>;d="a;b\\";c";e',
            [("d", '"a;b\\";c"', ';d="a;b\\";c"'), ("e", None, ";e")],
            id="semicolons-in-quotes",
        ),
        pytest.param(
            "<sip:a@h>;k, *;m=1",
            [("k", None, ";k"), ("m", "1", ";m=1")],
            id="positions-in-second-entry",
        ),
    ],
)
def test_params(value: str, expected: list[tuple[str, str | None, str]]) -> None:
    found = [param for entry in entries(value) for param in params(entry)]
    assert [(p.name, p.value, p.span.text) for p in found] == expected
    for param in found:
        assert_indexes(value, param.span)


@pytest.mark.parametrize("value", ["*", "<sip:alice@10.0.0.1:5060>", '"a;b" <sip:c@d;e>'])
def test_entry_without_params_has_none(value: str) -> None:
    assert params(entries(value)[0]) == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param(None, [], id="flag"),
        pytest.param('""', [], id="empty-quotes"),
        pytest.param("token", ["token"], id="token"),
        pytest.param('"URN%3AA,urn%3ab"', ["urn:a", "urn:b"], id="decoded-lowered"),
        pytest.param('" a , ,b "', ["a", "b"], id="spaces-and-empties"),
    ],
)
def test_unquote_list(value: str | None, expected: list[str]) -> None:
    assert unquote_list(value) == expected


def test_replace_spans_edits_in_any_order() -> None:
    value = "*;a=1;b;c=3, <sip:x@h;b>"
    a, b, c = params(entries(value)[0])
    edits = [(c.span, ";c=3;d"), (a.span, ";a=999"), (b.span, "")]
    assert replace_spans(value, edits) == "*;a=999;c=3;d, <sip:x@h;b>"
    assert replace_spans(value, []) == value


@given(SIPISH)
def test_entry_spans_index_the_value(value: str) -> None:
    for span in entries(value):
        assert_indexes(value, span)
        assert span.text == span.text.strip() != ""


@given(SIPISH)
def test_param_spans_index_the_value(value: str) -> None:
    for entry in entries(value):
        for param in params(entry):
            assert_indexes(value, param.span)
            assert param.span.text.startswith(";")
            assert entry.start <= param.span.start <= param.span.end <= entry.end


@pytest.mark.parametrize(
    ("entry", "uri"),
    [
        pytest.param("<sip:a@h;transport=tcp>;+g.oma.sip-im", "sip:a@h;transport=tcp", id="bare"),
        pytest.param('"Jos\udce9" <sip:a@h>;expires=600', "sip:a@h", id="quoted-name"),
        pytest.param('"a <b>" <sip:a@h>', "sip:a@h", id="bracket-in-quotes"),
        pytest.param('"a \\" <b>" <sip:a@h>', "sip:a@h", id="escaped-quote"),
        pytest.param("Dave Phone <sip:a@h>;q=1", "sip:a@h", id="token-name"),
        pytest.param("sip:a@h;expires=60", "sip:a@h", id="addr-spec"),
        pytest.param("<sip:a@h", "sip:a@h", id="unclosed"),
    ],
)
def test_address_uri(entry: str, uri: str) -> None:
    assert address_uri(entry) == uri
