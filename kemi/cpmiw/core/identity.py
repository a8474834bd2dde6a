"""Canonical subscriber identities, so that every alias of one subscriber finds one profile.

    tel:+1-555-123-0001                      -> tel:+15551230001
    sip:+15551230001@ims.example.net;user=phone -> tel:+15551230001
    SIP:Alice@IMS.Example.NET:5060;transport=tcp -> sip:Alice@ims.example.net

A SIP URI with `user=phone` is a telephone number (RFC 3261 19.1.1), whatever its host. Visual
separators of telephone numbers (RFC 3966) are dropped. SIP user parts are case-sensitive and
keep their case; hosts do not. URI parameters, ports and headers are not part of an identity.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_VISUAL_SEPARATORS = re.compile(r"[-.()]")
_GLOBAL_NUMBER = re.compile(r"\+[0-9]{1,15}")
_LOCAL_NUMBER = re.compile(r"[0-9*#]+")
_HOST = re.compile(r"[a-z0-9][a-z0-9.\-]*|\[[0-9a-f:.]+\]")
# RFC 3261 user part: unreserved, escaped and user-unreserved characters, no spaces.
_USER = re.compile(r"[A-Za-z0-9\-_.!~*'()%&=+$,;?/]+")


class IdentityError(ValueError):
    """The text is not a SIP, SIPS or TEL URI that names a subscriber."""


def canonical(uri: str) -> str:
    """The canonical form of a subscriber URI; raises IdentityError when it is not one."""
    text = uri.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1]
    scheme, colon, rest = text.partition(":")
    scheme = scheme.lower()
    if not colon or not rest:
        raise IdentityError(f"not a URI: {uri!r}")
    if scheme == "tel":
        return _tel(rest, uri)
    if scheme in ("sip", "sips"):
        return _sip(rest, uri)
    raise IdentityError(f"unsupported URI scheme {scheme!r} in {uri!r}")


def _tel(rest: str, uri: str) -> str:
    number, *params = rest.split(";")
    number = _VISUAL_SEPARATORS.sub("", unquote(number))
    if _GLOBAL_NUMBER.fullmatch(number):
        return f"tel:{number}"
    context = next((p[14:] for p in params if p.lower().startswith("phone-context=")), "")
    if _LOCAL_NUMBER.fullmatch(number) and context:
        # A context is a global number prefix (separators drop) or a domain name (they stay).
        if context.startswith("+"):
            context = _VISUAL_SEPARATORS.sub("", context)
        return f"tel:{number};phone-context={context.lower()}"
    raise IdentityError(f"not a telephone number: {uri!r}")


def _sip(rest: str, uri: str) -> str:
    rest = rest.split("?", 1)[0]
    if "@" not in rest:
        raise IdentityError(f"SIP URI without a user part: {uri!r}")
    user, _, hostpart = rest.rpartition("@")
    host, *params = hostpart.split(";")
    host = _strip_port(host).lower()
    if not user.split(";")[0] or not _HOST.fullmatch(host):
        raise IdentityError(f"SIP URI without a valid user or host: {uri!r}")
    if any(p.strip().lower() == "user=phone" for p in params):
        # user may carry its own tel parameters: "+15551230001;phone-context=..."
        return _tel(user, uri)
    if not _USER.fullmatch(user):
        raise IdentityError(f"SIP URI with an invalid user part: {uri!r}")
    # The user part stays as written, escapes included: decoding could change what it parses to.
    return f"sip:{user}@{host}"


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.split(":", 1)[0]


def host_of(uri: str) -> str:
    """The host of a SIP URI, lower-cased: `sip:user@Host:port;params` -> `host`, `[v6]` kept."""
    hostport = uri.partition(":")[2].split(";", 1)[0].rsplit("@", 1)[-1]
    return _strip_port(hostport).lower()
