"""Bulk provisioning: profiles read from files, checked, compared with Redis, then written.

Nothing is half-written (on Redis Cluster, copies are written key by key: an interrupted import
is completed by running it again). Every record of a file is decoded and validated by the one
profile model first (an error names the file, the line and the field); identities are checked for
duplicates within the file and for owners in Redis; only then are the new and changed profiles
written through `ProfileStore.put` (one MULTI/EXEC; on Redis Cluster key by key, see
store/profiles.py), the path the proxy's per-worker caches watch for invalidation. Unchanged
profiles are not rewritten, so a re-import disturbs no cache.

Formats: JSON (one profile or a list of them), JSON Lines (one profile a line) and CSV with a
header row naming profile fields; in CSV, list fields are separated by spaces:

    identities,services,barred
    sip:bob@ims.example.net tel:+15551230002,im sms,false
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import cast

import msgspec
import redis

from ..core import profile as profile_model
from ..core.profile import Profile, ProfileError
from ..store.profiles import Audit, OwnerConflictError, ProfileStore
from ..store.redis import Client, text

FORMATS = ("json", "jsonl", "csv")
_LAYOUT_1 = "cpmiw:1:"  # the key layout before Redis Cluster support (`profile upgrade`)
COLUMNS: tuple[str, ...] = Profile.__struct_fields__
REQUIRED_COLUMNS = ("identities", "services")
_LIST_FIELDS = frozenset({"identities", "services"})
_BOOLEAN_FIELDS = frozenset({"barred", "sms_fallback"})
_BOOLEANS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
_AT_PATH = re.compile(r"^(?P<what>.*) - at `\$\.?(?P<path>[^`]*)`$")

Progress = Callable[[int], None]
_COMPARED = 2_500  # records compared per step: a few MGETs each, progress between them


class InputError(ValueError):
    """A record that is not a valid profile; the message names file, line and field."""


class ConflictError(InputError):
    """A record that would take an identity another subscriber owns."""


@dataclass(frozen=True)
class Entry:
    """A profile read from a file, and where: `name:line`."""

    profile: Profile
    where: str


def format_of(name: str) -> str:
    """The format a file name implies (JSON when the suffix says nothing)."""
    suffix = name.rsplit(".", 1)[-1].lower()
    return {"csv": "csv", "jsonl": "jsonl", "ndjson": "jsonl"}.get(suffix, "json")


def _reason(error: msgspec.ValidationError) -> str:
    """msgspec's message turned around to name the field first: `services[0]: Invalid ...`."""
    text = str(error)
    if text.startswith("Object contains unknown field"):
        return "unknown field " + text.split("field", 1)[1].strip().replace("`", "'")
    match = _AT_PATH.match(text)
    if match is None or not match["path"]:
        return text
    return f"{match['path']}: {match['what']}"


def entry_from(record: object, where: str) -> Entry:
    """A profile from JSON builtins (CSV cells, a record with options applied), validated."""
    try:
        return Entry(msgspec.convert(record, Profile), where)
    except msgspec.ValidationError as error:
        raise InputError(f"{where}: {_reason(error)}") from None


def _decode(raw: bytes, where: str) -> Entry:
    try:
        return Entry(msgspec.json.decode(raw, type=Profile), where)
    except msgspec.ValidationError as error:
        raise InputError(f"{where}: {_reason(error)}") from None
    except msgspec.DecodeError as error:
        raise InputError(f"{where}: not JSON: {error}") from None


def read_entries(data: bytes, name: str, fmt: str, progress: Progress | None = None) -> list[Entry]:
    """Every profile of a file, validated; raises InputError at the first bad record."""
    readers = {"json": _from_json, "jsonl": _from_jsonl, "csv": _from_csv}
    entries = readers[fmt](data, name, progress or (lambda _: None))
    check_unique(entries)
    return entries


def count_records(data: bytes, fmt: str) -> int:
    """How many records a file holds, cheaply (for a progress bar's length)."""
    if fmt == "json":
        stripped = data.lstrip()
        return len(msgspec.json.decode(data, type=list[msgspec.Raw])) if stripped[:1] == b"[" else 1
    lines = sum(1 for line in data.splitlines() if line.strip())
    return lines - 1 if fmt == "csv" else lines


def _line_of(data: bytes, raws: Sequence[msgspec.Raw], index: int) -> int:
    """The line where element `index` of a JSON list starts (found again only on error)."""
    position = 0
    for raw in raws[: index + 1]:
        position = data.find(bytes(raw), position)
    return data.count(b"\n", 0, position) + 1


def _from_json(data: bytes, name: str, progress: Progress) -> list[Entry]:
    try:
        document = msgspec.json.decode(data, type=list[msgspec.Raw] | dict[str, msgspec.Raw])
    except (msgspec.DecodeError, msgspec.ValidationError) as error:
        raise InputError(f"{name}: not a JSON profile or list of profiles: {error}") from None
    if isinstance(document, dict):
        progress(1)
        return [_decode(data, name)]
    entries = []
    for index, raw in enumerate(document):
        try:
            entries.append(_decode(bytes(raw), f"{name}:{index + 1}"))
        except InputError as error:
            where = f"{name}:{_line_of(data, document, index)}"
            reason = str(error).split(": ", 1)[1]
            raise InputError(f"{where}: profile {index + 1}: {reason}") from None
        progress(1)
    return entries


def _from_jsonl(data: bytes, name: str, progress: Progress) -> list[Entry]:
    entries = []
    for number, line in enumerate(data.splitlines(), start=1):
        if line.strip():
            entries.append(_decode(line, f"{name}:{number}"))
            progress(1)
    return entries


def _cell(column: str, value: str, where: str) -> object:
    if column in _LIST_FIELDS:
        return value.split()
    if column in _BOOLEAN_FIELDS:
        if value.lower() not in _BOOLEANS:
            raise InputError(f"{where}: {column}: expected true or false, got {value!r}")
        return _BOOLEANS[value.lower()]
    if column == "format":
        if not value.isdigit():
            raise InputError(f"{where}: format: expected a whole number, got {value!r}")
        return int(value)
    return value


def _from_csv(data: bytes, name: str, progress: Progress) -> list[Entry]:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InputError(f"{name}: not UTF-8: {error}") from None
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [column.strip() for column in next(reader, [])]
    unknown = [column for column in header if column not in COLUMNS]
    if unknown:
        raise InputError(
            f"{name}:1: unknown column {unknown[0]!r} (columns are {', '.join(COLUMNS)})"
        )
    missing = [column for column in REQUIRED_COLUMNS if column not in header]
    if missing:
        raise InputError(f"{name}:1: missing column {missing[0]!r}")
    entries = []
    for row in reader:
        where = f"{name}:{reader.line_num}"
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise InputError(f"{where}: {len(row)} cells, the header has {len(header)}")
        record = {
            column: _cell(column, value.strip(), where)
            for column, value in zip(header, row, strict=True)
            if value.strip() or column in _LIST_FIELDS
        }
        entries.append(entry_from(record, where))
        progress(1)
    return entries


def check_unique(entries: Sequence[Entry]) -> None:
    """No identity may belong to two records of one file."""
    seen: dict[str, str] = {}
    for entry in entries:
        for alias in sorted(entry.profile.aliases):
            if alias in seen:
                raise ConflictError(f"{entry.where}: identity {alias} is already at {seen[alias]}")
            seen[alias] = entry.where


def to_csv(profiles: Sequence[Profile]) -> str:
    """Profiles as CSV with every column, readable again by `read_entries`."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for profile in profiles:
        record = msgspec.to_builtins(profile)
        writer.writerow(_csv_value(record.get(column)) for column in COLUMNS)
    return out.getvalue()


def _csv_value(value: object) -> str:
    if isinstance(value, list):
        return " ".join(str(item) for item in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else str(value)


@dataclass(frozen=True)
class Change:
    """What writing one profile would do to the subscriber stored under its key."""

    subscriber: str
    old: Profile | ProfileError | None  # None: not stored; ProfileError: stored but invalid
    new: Profile | None  # None: the subscriber is deleted
    where: str = ""  # the record it comes from (`file:line`, or the URI given)

    @property
    def kind(self) -> str:
        if self.new is None:
            return "delete"
        if self.old is None:
            return "create"
        return "unchanged" if self.old == self.new else "update"

    def fields(self) -> list[tuple[str, object, object]]:
        """The fields that differ, with old and new values as JSON builtins."""
        if not isinstance(self.old, Profile) or self.new is None:
            return []
        old, new = msgspec.to_builtins(self.old), msgspec.to_builtins(self.new)
        return [(f, old.get(f), new.get(f)) for f in COLUMNS if old.get(f) != new.get(f)]


class Provisioning:
    """Reads and writes profiles in bulk; every write goes through ProfileStore.put / delete."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.store = ProfileStore(client)

    def stored(self, subscribers: Sequence[str]) -> list[Profile | ProfileError | None]:
        """The stored profile of each subscriber (None when absent, the error when invalid)."""
        return [
            None if raw is None else _decoded_or_error(raw)
            for raw in self.store.copies(subscribers)
        ]

    def changes(self, entries: Sequence[Entry], progress: Progress | None = None) -> list[Change]:
        """What storing `entries` would change; raises ConflictError for a foreign identity.

        Reads Redis in chunks of records, calling `progress` with the records compared.
        """
        found: list[Change] = []
        for start in range(0, len(entries), _COMPARED):
            chunk = entries[start : start + _COMPARED]
            self._check_owners(chunk)
            subscribers = [entry.profile.subscriber for entry in chunk]
            found += [
                Change(subscriber, old, entry.profile, entry.where)
                for subscriber, old, entry in zip(
                    subscribers, self.stored(subscribers), chunk, strict=True
                )
            ]
            if progress:
                progress(len(chunk))
        return found

    def _check_owners(self, entries: Sequence[Entry]) -> None:
        claims = [(e, alias) for e in entries for alias in sorted(e.profile.aliases)]
        copies = self.store.copies([alias for _, alias in claims])
        owners = [None if raw is None else _owner(raw) for raw in copies]
        for (entry, alias), owner in zip(claims, owners, strict=True):
            if owner is not None and owner != entry.profile.subscriber:
                raise _conflict(entry.where, alias, owner)

    def apply(self, changes: Sequence[Change], audit: Audit) -> int:
        """Writes the created and updated profiles in one transaction; how many it wrote.

        The owners checked by `changes` are checked again inside the transaction: another
        writer may have taken an identity since (ConflictError, nothing written).
        """
        pending = [c for c in changes if c.kind in ("create", "update") and c.new]
        try:
            return self.store.put([c.new for c in pending if c.new], audit=audit)
        except OwnerConflictError as error:
            where = next((c.where for c in pending if c.subscriber == error.subscriber), "")
            raise _conflict(where, error.identity, error.owner) from None

    def subscribers(self, pattern: str = "*") -> list[str]:
        """Every stored subscriber whose canonical identity matches the glob `pattern`, sorted."""
        identities = self.store.identities(pattern)
        copies = self.store.copies(identities)
        return [
            identity
            for identity, raw in zip(identities, copies, strict=True)
            if raw is not None and _owner(raw) in (identity, None)
        ]

    def layout_1(self) -> list[tuple[str, Profile | ProfileError]]:
        """The profiles stored in key layout 1 (one Redis, before Cluster support), by subscriber:
        `cpmiw:1:profile:<subscriber>` with an alias key per identity."""
        keys = sorted(text(k) for k in self.client.scan_iter(match=f"{_LAYOUT_1}profile:*"))
        values = cast(redis.Redis, self.client).mget(keys) if keys else []
        return [
            (key.removeprefix(f"{_LAYOUT_1}profile:"), _decoded_or_error(_bytes(value)))
            for key, value in zip(keys, values, strict=True)
            if value is not None
        ]

    def drop_layout_1(self, subscribers: Sequence[str]) -> None:
        """Deletes the layout-1 keys of `subscribers` (profile and aliases), and the layout-1
        change stream and epoch once no layout-1 profile is left."""
        stored = dict(self.layout_1())
        keys = [f"{_LAYOUT_1}profile:{s}" for s in subscribers]
        for subscriber in subscribers:
            found = stored.get(subscriber)
            if isinstance(found, Profile):
                keys += [f"{_LAYOUT_1}alias:{alias}" for alias in found.aliases]
        if len(stored) == len(set(subscribers) & set(stored)):
            keys += [f"{_LAYOUT_1}changes", f"{_LAYOUT_1}epoch"]
        for start in range(0, len(keys), 10_000):
            self.client.delete(*keys[start : start + 10_000])

    def export(self, pattern: str = "*") -> Iterator[tuple[str, Profile | ProfileError]]:
        """Every stored profile matching `pattern`, sorted by subscriber."""
        subscribers = self.subscribers(pattern)
        for subscriber, found in zip(subscribers, self.stored(subscribers), strict=True):
            if found is not None:  # deleted since the scan
                yield subscriber, found


def _conflict(where: str, identity: str, owner: str) -> ConflictError:
    return ConflictError(
        f"{where}: identity {identity} belongs to subscriber {owner}; remove it there first"
    )


def _bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def _owner(raw: bytes) -> str | None:
    """The subscriber a stored copy belongs to; None when the copy is no valid profile."""
    found = _decoded_or_error(raw)
    return None if isinstance(found, ProfileError) else found.subscriber


def _decoded_or_error(raw: bytes) -> Profile | ProfileError:
    try:
        return profile_model.decode(raw)
    except ProfileError as error:
        return error
