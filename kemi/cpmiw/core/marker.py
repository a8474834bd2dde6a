"""The unforgeable "coming back from the AS" marker carried in the proxy's own Route URI.

`ims_isc` keeps this state in clear in the Route URI, so anyone can forge it and skip the AS.
Ours is `<expiry>.<mac>`: an HMAC-SHA256 over the expiry and the request it was issued for
(Call-ID, CSeq number, method), truncated to 128 bits. It proves the proxy issued it for this very
request and not long ago; the adapter additionally honours it only from a configured AS address.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re

PARAM = "cpmiw"
_DIGITS = re.compile(r"[0-9]{1,12}")


def _mac(secret: bytes, expiry: int, binding: str) -> str:
    digest = hmac.new(secret, f"{expiry}|{binding}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


def binding(call_id: str, cseq_number: str, method: str) -> str:
    """What a marker is bound to: the transaction the proxy sent to the AS."""
    return f"{call_id}|{cseq_number}|{method.upper()}"


def issue(secret: bytes, bound_to: str, now: float, ttl: int) -> str:
    expiry = int(now) + ttl
    return f"{expiry}.{_mac(secret, expiry, bound_to)}"


def verify(secret: bytes, marker: str, bound_to: str, now: float) -> bool:
    """True only for a marker this proxy issued for `bound_to` that has not expired."""
    expiry_text, _, mac = marker.partition(".")
    # The marker comes from a header the sender wrote: anything unexpected is simply invalid.
    if not _DIGITS.fullmatch(expiry_text) or not mac.isascii() or int(expiry_text) < now:
        return False
    return hmac.compare_digest(mac, _mac(secret, int(expiry_text), bound_to))
