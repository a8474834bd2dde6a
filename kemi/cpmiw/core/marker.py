"""The unforgeable "coming back from the AS" marker carried in the proxy's own Route URI.

`ims_isc` keeps this state in clear in the Route URI, so anyone can forge it and skip the AS.
Ours is `<expiry>.<nonce>.<mac>`: an HMAC-SHA256 over the expiry, a random nonce and the request
it was issued for (Call-ID, CSeq number, method), truncated to 128 bits. It proves a proxy that
holds the secret issued it for this very request and not long ago; the adapter additionally
honours it only from a configured AS address, and only once.

The nonce makes every marker different, even for the same request sent to an AS twice within
one second: honouring one never refuses the other, and the nonce names the marker in the
record of those honoured (shared by every proxy, in Redis). Secrets rotate: a marker is issued
with the current secret and verified with the current or the previous one, so that markers in
flight survive a rotation made one proxy at a time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence

PARAM = "cpmiw"
NONCE_BYTES = 8
_DIGITS = re.compile(r"[0-9]{1,12}")
_NONCE = re.compile(r"[A-Za-z0-9_-]{11}")  # NONCE_BYTES, base64url without padding


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _mac(secret: bytes, expiry: int, nonce: str, binding: str) -> str:
    digest = hmac.new(secret, f"{expiry}|{nonce}|{binding}".encode(), hashlib.sha256).digest()
    return _b64(digest[:16])


def binding(call_id: str, cseq_number: str, method: str) -> str:
    """What a marker is bound to: the transaction the proxy sent to the AS."""
    return f"{call_id}|{cseq_number}|{method.upper()}"


def issue(secret: bytes, bound_to: str, now: float, ttl: int, nonce: bytes) -> str:
    """A marker valid for `ttl` s; `nonce`: NONCE_BYTES random bytes, new for each marker."""
    expiry = int(now) + ttl
    text = _b64(nonce)
    return f"{expiry}.{text}.{_mac(secret, expiry, text, bound_to)}"


def verify(secrets: Sequence[bytes], marker: str, bound_to: str, now: float) -> bool:
    """True only for a marker issued with one of `secrets` for `bound_to`, not expired."""
    expiry_text, nonce, mac = _parts(marker)
    # The marker comes from a header the sender wrote: anything unexpected is simply invalid.
    if not _DIGITS.fullmatch(expiry_text) or not _NONCE.fullmatch(nonce) or not mac.isascii():
        return False
    if int(expiry_text) < now:
        return False
    return any(
        hmac.compare_digest(mac, _mac(secret, int(expiry_text), nonce, bound_to))
        for secret in secrets
    )


def nonce_of(marker: str) -> str:
    """The nonce naming a (verified) marker: what the record of honoured markers keeps."""
    return _parts(marker)[1]


def _parts(marker: str) -> tuple[str, str, str]:
    expiry, _, rest = marker.partition(".")
    nonce, _, mac = rest.partition(".")
    return expiry, nonce, mac
