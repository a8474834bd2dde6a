"""The terminating service profile: one model, validated on every read.

Stored in Redis as JSON (see README, "Profile format"). Decoding is strict: an unknown field, a
wrong type, an unknown service name or a URI that is not one raises ProfileError with the field
named, so a hand-edited profile never reaches the decision half-understood.
"""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

from .identity import IdentityError, canonical
from .services import Family

FORMAT_VERSION = 1


class Interworking(enum.Enum):
    """What to do with CPM traffic for an IM-only recipient (and IM traffic for a CPM-only one)."""

    REWRITE = "rewrite"  # swap the feature tag in the proxy and deliver
    IM_AS = "im_as"  # hand the request to the IM application server
    UNCHANGED = "unchanged"  # deliver as sent and let the client cope


class AsFailure(enum.Enum):
    """Default handling when an application server fails (408, 5xx, no answer)."""

    CONTINUE = "continue"
    TERMINATE = "terminate"


def is_sip(uri: str) -> bool:
    return uri[:5].lower().startswith(("sip:", "sips:"))


Uri = Annotated[str, msgspec.Meta(min_length=5, max_length=256)]
MAX_IDENTITIES = 32
# A stored profile longer than this is refused before it is parsed: every field is bounded, and
# 32 identities of 256 characters with every other field set come to about 9 KB.
MAX_BYTES = 16384


class Profile(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A subscriber's terminating service profile (format 1)."""

    format: int = FORMAT_VERSION
    identities: Annotated[list[Uri], msgspec.Meta(min_length=1, max_length=MAX_IDENTITIES)]
    services: Annotated[list[Family], msgspec.Meta(max_length=len(Family))]
    barred: bool = False
    im_as: Uri | None = None
    ip_sm_gw: Uri | None = None
    interworking: Interworking = Interworking.REWRITE
    as_failure: AsFailure = AsFailure.CONTINUE
    # With `sms` among the services: when no device takes a CPM or IM request delivered to the
    # subscriber's devices (each failed, or none answered in time), the IP-SM-GW gets it.
    sms_fallback: bool = True

    def __post_init__(self) -> None:
        if self.format != FORMAT_VERSION:
            raise ValueError(f"format {self.format} is not supported (expected {FORMAT_VERSION})")
        for uri in self.identities:
            try:
                canonical(uri)
            except IdentityError as error:
                raise ValueError(f"identities: {error}") from None
        if len(set(self.services)) != len(self.services):
            raise ValueError("services: a service listed twice")
        for field in ("im_as", "ip_sm_gw"):
            uri = getattr(self, field)
            if uri is not None and not is_sip(uri):
                raise ValueError(f"{field}: not a SIP URI: {uri!r}")
        if not any(is_sip(uri) for uri in self.identities):
            raise ValueError("identities: at least one SIP URI is needed to register with")

    @property
    def subscriber(self) -> str:
        """The subscriber's key: the canonical form of its first identity."""
        return canonical(self.identities[0])

    @property
    def aliases(self) -> frozenset[str]:
        return frozenset(canonical(uri) for uri in self.identities)

    @property
    def registration_aor(self) -> str:
        """The SIP identity the subscriber's devices register with: its first SIP URI."""
        for uri in self.identities:
            if is_sip(uri):
                return uri
        raise AssertionError("validated: a profile has a SIP identity")

    def has(self, family: Family) -> bool:
        return family in self.services


class ProfileError(ValueError):
    """A stored profile that does not decode or validate; the message names the field."""


_decoder = msgspec.json.Decoder(Profile)
_encoder = msgspec.json.Encoder()


def decode(raw: bytes | str) -> Profile:
    if len(raw) > MAX_BYTES:
        raise ProfileError(f"{len(raw)} bytes, more than a profile may take ({MAX_BYTES})")
    try:
        return _decoder.decode(raw)
    except msgspec.ValidationError as error:
        raise ProfileError(str(error)) from None
    except msgspec.DecodeError as error:
        raise ProfileError(f"not JSON: {error}") from None


def encode(profile: Profile) -> bytes:
    return _encoder.encode(profile)


def json_schema() -> dict[str, object]:
    return msgspec.json.schema(Profile)
