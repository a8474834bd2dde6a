"""Caller preferences (RFC 3841): which registered devices a request may reach, best first.

A device's feature set is what the feature parameters of its registered Contact say (RFC 3840):
`;+g.3gpp.icsi-ref="urn%3A...,urn%3A..."`, `;+g.oma.sip-im`, `;video`, `;methods="INVITE,BYE"`.
Each Accept-Contact and Reject-Contact value of a request is a predicate over such feature sets,
written the same way, with the directives `require` and `explicit`. Matching (RFC 3841 7.2.4):

- a device whose feature set matches a Reject-Contact predicate is left out; a Reject-Contact
  predicate only matches a device that registered every feature tag it names;
- an Accept-Contact predicate matches a device unless a feature tag they both name has no value
  in common (a tag the device did not register matches implicitly). A device it does not match is
  left out if the predicate says `require`; with `require` and `explicit`, also one that did not
  register every tag it names. Without `require` a predicate only orders the devices: each one
  that matches scores the share of its tags the device registered explicitly (with `explicit`,
  only a full score counts), and a device's score (Qa) is the mean of those.

Values: a tag without value is the boolean TRUE; a quoted list `"a,b,!c"` is an alternative of
tokens (compared without case and after percent-decoding), negations, `<strings>` (compared
exactly) and numbers `#=n`, `#>=n`, `#<=n`, `#n:m`. Implicit preferences (the method and event
package of RFC 3841 7.2.2) are not derived: the registrar's look-up already skips contacts whose
`methods` exclude the request's method.

Everything is remembered per process: clients of one kind send the same few header values, and
devices of one kind register the same feature parameters.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import unquote

from . import fields

# The base feature tags of RFC 3840 (10.1), written without their `sip.` prefix in a Contact;
# every other feature tag starts with `+`.
BASE_TAGS = frozenset(
    {
        "audio", "application", "data", "control", "video", "text", "automata", "class",
        "duplex", "mobility", "description", "events", "priority", "methods", "schemes",
        "extensions", "isfocus", "actor", "language",
    }
)  # fmt: skip


def is_feature(name: str) -> bool:
    """Whether a (lower-cased) Contact parameter is a feature tag."""
    return name.startswith("+") or name in BASE_TAGS


@dataclass(frozen=True)
class Atom:
    """One alternative of a feature value: a token, a `<string>` or a closed numeric range."""

    kind: str  # "token", "string" or "number"
    text: str = ""  # token (lower-cased, percent-decoded) or string
    low: float = -math.inf  # number only
    high: float = math.inf
    negated: bool = False

    def accepts(self, value: Atom) -> bool:
        """Whether the single value `value` (a non-negated atom, ranges of one point) is allowed."""
        if self.kind != value.kind:
            return self.negated
        if self.kind == "number":
            return (self.low <= value.low <= self.high) != self.negated
        return (self.text == value.text) != self.negated


Value = tuple[Atom, ...]  # alternatives: any one of them
FeatureSet = Mapping[str, Value]  # a device's feature tags and their values
_TRUE = (Atom("token", "true"),)
_OTHER = Atom("token", "\x00")  # a token no atom names: what a negation alone allows


def _number(text: str) -> Atom:
    if text.startswith(">="):
        return Atom("number", low=float(text[2:]))
    if text.startswith("<="):
        return Atom("number", high=float(text[2:]))
    if text.startswith("="):
        return Atom("number", low=float(text[1:]), high=float(text[1:]))
    low, colon, high = text.partition(":")
    if not colon:
        raise ValueError(f"not a numeric feature value: #{text}")
    return Atom("number", low=float(low), high=float(high))


def _atom(item: str) -> Atom:
    negated = item.startswith("!")
    item = item[1:].strip() if negated else item
    if item.startswith("<") and item.endswith(">"):
        atom = Atom("string", item[1:-1])
    elif item.startswith("#"):
        atom = _number(item[1:].strip())
    else:
        atom = Atom("token", unquote(item).lower())
    return Atom(atom.kind, atom.text, atom.low, atom.high, negated) if negated else atom


def _value(raw: str | None) -> Value:
    """The alternatives of a feature parameter's value (as written, quotes included)."""
    if raw is None:
        return _TRUE
    inner = raw.strip()
    if len(inner) >= 2 and inner[0] == inner[-1] == '"':
        inner = inner[1:-1]
    if inner.startswith("<") and inner.endswith(">"):  # a string value may hold commas
        return (Atom("string", inner[1:-1]),)
    try:
        return tuple(_atom(item.strip()) for item in inner.split(",") if item.strip())
    except ValueError:  # a number that is none: the literal text, which matches only itself
        return (Atom("string", inner),)


def _candidates(values: Iterable[Value]) -> list[Atom]:
    """Single values worth trying to find one that two values both allow."""
    found = [_OTHER]
    for value in values:
        for atom in value:
            if atom.kind != "number":
                found.append(Atom(atom.kind, atom.text))
                continue
            for point in (atom.low, atom.high):
                if math.isfinite(point):
                    found += [Atom("number", low=p) for p in (point - 1, point, point + 1)]
    return found


def overlap(first: Value, second: Value) -> bool:
    """Whether some single value is allowed by both (RFC 2533 matching of one feature tag)."""
    return any(
        any(a.accepts(c) for a in first) and any(a.accepts(c) for a in second)
        for c in _candidates((first, second))
    )


@functools.lru_cache(maxsize=1024)
def feature_set(params: str) -> FeatureSet:
    """The feature set of a device, from the `;name[=value]` feature parameters of its Contact."""
    span = fields.Span(0, len(params), params)
    return {p.name: _value(p.value) for p in fields.params(span) if is_feature(p.name)}


@dataclass(frozen=True)
class Predicate:
    """One Accept-Contact or Reject-Contact value: its feature tags, and its directives."""

    terms: tuple[tuple[str, Value], ...]
    require: bool = False
    explicit: bool = False


@functools.lru_cache(maxsize=1024)
def predicates(header: str) -> tuple[Predicate, ...]:
    """The predicates of an Accept-Contact or Reject-Contact header (its lines joined by commas)."""
    found = []
    for entry in fields.entries(header):
        params = fields.params(entry)
        terms = tuple((p.name, _value(p.value)) for p in params if is_feature(p.name))
        names = {p.name for p in params}
        if terms:  # `*` alone asks for nothing
            found.append(Predicate(terms, "require" in names, "explicit" in names))
    return tuple(found)


@functools.lru_cache(maxsize=256)
def no_fork(disposition: str) -> bool:
    """Whether Request-Disposition asks the proxy to reach one device only (`no-fork`)."""
    return "no-fork" in (item.strip().lower() for item in disposition.split(","))


def rejected(reject: tuple[Predicate, ...], features: FeatureSet) -> bool:
    """Whether a Reject-Contact predicate matches: every tag it names registered, with a value
    in common."""
    return any(
        all(name in features and overlap(value, features[name]) for name, value in p.terms)
        for p in reject
    )


def score(
    accept: tuple[Predicate, ...], features: FeatureSet, assumed: frozenset[str] = frozenset()
) -> float | None:
    """The device's Qa against the Accept-Contact predicates; None when one of them that says
    `require` leaves it out. Tags in `assumed` count as registered explicitly with any value."""
    scores = []
    for p in accept:
        explicit = 0
        matches = True
        for name, value in p.terms:
            if name in assumed:
                explicit += 1
            elif name in features:
                explicit += 1
                matches = matches and overlap(value, features[name])
        full = explicit == len(p.terms)
        if not matches or (p.explicit and not full):
            if p.require:
                return None
            continue
        scores.append(explicit / len(p.terms))
    if not accept:
        return 1.0
    return sum(scores) / len(scores) if scores else 0.0
