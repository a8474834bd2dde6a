"""Lexing of SIP header values that carry feature parameters (RFC 3840 / RFC 3841).

Accept-Contact, Contact and the P-*-Service headers are comma-separated lists whose entries
carry `;name[=value]` parameters; values may be quoted strings holding commas of their own.
The functions here find those pieces *with their positions*, so that a rewrite can replace one
parameter and leave every other byte of the header exactly as the client sent it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import pairwise
from urllib.parse import unquote


@dataclass(frozen=True)
class Span:
    """A piece of a header value: `value[start:end] == text`."""

    start: int
    end: int
    text: str


@dataclass(frozen=True)
class Param:
    """One `;name[=value]` parameter; `span` covers it from its leading `;`."""

    name: str  # lower-cased
    value: str | None  # as written, quotes included
    span: Span


def _top_level(value: str) -> Iterator[tuple[int, str]]:
    """Yields (index, char) for the characters outside quoted strings and <...> URIs."""
    quoted = bracketed = escaped = False
    for index, char in enumerate(value):
        if quoted:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                quoted = False
            continue
        if bracketed:
            bracketed = char != ">"
            continue
        if char == '"':
            quoted = True
        elif char == "<":
            bracketed = True
        else:
            yield index, char


def entries(value: str) -> list[Span]:
    """The comma-separated entries of a header value, each with its surrounding space trimmed."""
    cuts = [index for index, char in _top_level(value) if char == ","]
    spans = []
    for start, end in pairwise([-1, *cuts, len(value)]):
        text = value[start + 1 : end]
        lead = len(text) - len(text.lstrip())
        stripped = text.strip()
        if stripped:
            spans.append(Span(start + 1 + lead, start + 1 + lead + len(stripped), stripped))
    return spans


def params(entry: Span) -> list[Param]:
    """The `;name[=value]` parameters of one entry, positioned in the whole header value."""
    cuts = [index for index, char in _top_level(entry.text) if char == ";"]
    found = []
    for start, end in pairwise([*cuts, len(entry.text)]):
        raw = entry.text[start:end].rstrip()
        name, has_value, val = raw[1:].partition("=")
        found.append(
            Param(
                name=name.strip().lower(),
                value=val.strip() if has_value else None,
                span=Span(entry.start + start, entry.start + start + len(raw), raw),
            )
        )
    return found


def address_uri(entry: str) -> str:
    """The URI of one entry of a Contact-like header: `"A <b>" <sip:a@b>;p` and `sip:a@b;p`
    give `sip:a@b`. A display name is a quoted string or tokens: a `<` inside quotes is text."""
    quoted = escaped = False
    for index, char in enumerate(entry):
        if escaped:
            escaped = False
        elif quoted:
            escaped, quoted = char == "\\", char != '"'
        elif char == '"':
            quoted = True
        elif char == "<":
            end = entry.find(">", index)
            return entry[index + 1 : end if end >= 0 else len(entry)].strip()
    return entry.split(";", 1)[0].strip()


def unquote_list(param_value: str | None) -> list[str]:
    """The members of a quoted, comma-separated feature value, percent-decoded, lower-cased."""
    if param_value is None:
        return []
    inner = param_value.strip()
    if len(inner) >= 2 and inner[0] == inner[-1] == '"':
        inner = inner[1:-1]
    return [unquote(member.strip()).lower() for member in inner.split(",") if member.strip()]


def replace_spans(value: str, edits: list[tuple[Span, str]]) -> str:
    """`value` with each span replaced by its new text (spans must not overlap)."""
    for span, text in sorted(edits, key=lambda edit: edit[0].start, reverse=True):
        value = value[: span.start] + text + value[span.end :]
    return value
