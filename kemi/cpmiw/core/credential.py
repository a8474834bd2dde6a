"""Digest credentials of a subscriber: what a REGISTER's `Authorization` is checked against.

The password itself is never kept. When it is set, the proxy stores for each digest algorithm
HA1 = H(username ":" realm ":" password) (RFC 3261 22.4 for MD5, RFC 8760 for SHA-256): enough
for Kamailio's `auth` module to check a response, useless for signing in anywhere else (another
realm has another HA1), but still to be guarded like a password within its realm.

The realm is the domain of the registration identity (the `To` of the REGISTER): the proxy
challenges with it before it knows whether the subscriber exists. The username is what the
device puts in `Authorization`; by default the user part of that identity.
"""

from __future__ import annotations

import enum
import hashlib
import re
from typing import Annotated

import msgspec

from .identity import IdentityError, canonical

MIN_PASSWORD = 8
MAX_PASSWORD = 256
_HEX = re.compile(r"[0-9a-f]+")
_USERNAME = re.compile(r"[^\x00-\x1f\"\\\x7f]+")  # any text a quoted-string holds unescaped


class CredentialError(ValueError):
    """A credential, or what it is made from, is not valid."""


class Algorithm(enum.Enum):
    """Digest algorithms, as named in `WWW-Authenticate: ... algorithm=`."""

    MD5 = "MD5"
    SHA256 = "SHA-256"

    def digest(self, text: str) -> str:
        data = text.encode()
        return (hashlib.md5(data) if self is Algorithm.MD5 else hashlib.sha256(data)).hexdigest()

    @property
    def hex_length(self) -> int:
        return 32 if self is Algorithm.MD5 else 64


def ha1(algorithm: Algorithm, username: str, realm: str, password: str) -> str:
    return algorithm.digest(f"{username}:{realm}:{password}")


Hex = Annotated[str, msgspec.Meta(pattern="^[0-9a-f]+$", max_length=64)]


class Credential(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One subscriber's credential: the record kept in Redis and in credential files."""

    identity: Annotated[str, msgspec.Meta(max_length=256)]
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    realm: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    ha1_md5: Hex | None = None
    ha1_sha256: Hex | None = None

    def __post_init__(self) -> None:
        try:
            identity = canonical(self.identity)
        except IdentityError as error:
            raise ValueError(str(error)) from None
        if identity != self.identity or not identity.startswith("sip:"):
            raise ValueError(f"identity must be a canonical SIP URI, not {self.identity!r}")
        if self.realm != realm_of(identity):
            raise ValueError(f"realm {self.realm!r} is not the domain of {identity}")
        if not _USERNAME.fullmatch(self.username):
            raise ValueError("username holds a control character, a quote or a backslash")
        for algorithm in Algorithm:
            value = self.hash(algorithm)
            if value is not None and len(value) != algorithm.hex_length:
                raise ValueError(f"the {algorithm.value} HA1 has not {algorithm.hex_length} digits")
        if self.ha1_md5 is None and self.ha1_sha256 is None:
            raise ValueError("neither an MD5 nor a SHA-256 HA1")

    def hash(self, algorithm: Algorithm) -> str | None:
        return self.ha1_md5 if algorithm is Algorithm.MD5 else self.ha1_sha256

    @property
    def algorithms(self) -> list[Algorithm]:
        return [algorithm for algorithm in Algorithm if self.hash(algorithm) is not None]


def realm_of(identity: str) -> str:
    """The digest realm of a canonical SIP identity: its domain."""
    return identity.rpartition("@")[2]


def user_of(identity: str) -> str:
    return identity.partition(":")[2].rpartition("@")[0]


def from_password(identity: str, password: str, username: str | None = None) -> Credential:
    """The credential of `identity` (any form of its SIP URI) for `password`, every algorithm."""
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise CredentialError(f"a password has {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    try:
        aor = canonical(identity)
    except IdentityError as error:
        raise CredentialError(str(error)) from None
    if not aor.startswith("sip:"):
        raise CredentialError(f"credentials belong to a SIP identity, not {identity}")
    name = username or user_of(aor)
    realm = realm_of(aor)
    try:
        return Credential(
            identity=aor,
            username=name,
            realm=realm,
            ha1_md5=ha1(Algorithm.MD5, name, realm, password),
            ha1_sha256=ha1(Algorithm.SHA256, name, realm, password),
        )
    except (ValueError, msgspec.ValidationError) as error:
        raise CredentialError(str(error)) from None


_decoder = msgspec.json.Decoder(Credential)
_encoder = msgspec.json.Encoder()


def decode(raw: bytes | str) -> Credential:
    """A credential from its JSON record; CredentialError naming the field when invalid (the
    message never quotes a value: an HA1 is a secret)."""
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError as error:
        raise CredentialError(str(error)) from None
    except msgspec.DecodeError:
        raise CredentialError("not a JSON object") from None


def convert(record: object) -> Credential:
    """A credential from a decoded record (a file's); CredentialError as decode()."""
    try:
        return msgspec.convert(record, Credential)
    except msgspec.ValidationError as error:
        raise CredentialError(str(error)) from None


def encode(credential: Credential) -> bytes:
    return _encoder.encode(credential)
