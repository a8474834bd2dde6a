"""SIP digest authentication as a device does it (RFC 3261 22.4; RFC 7616 and RFC 8760 for
SHA-256): test peers answer the proxy's challenges with it. Written from the RFCs, apart from
the product's code (core/credential.py), so that a mistake on one side is not mirrored on the
other."""

from __future__ import annotations

import hashlib
import re
import secrets

_PARAM = re.compile(r'([A-Za-z-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^,\s]+)')


def challenge_params(challenge: str) -> dict[str, str]:
    """The parameters of a `Digest ...` challenge, names lower-cased, quotes removed."""
    scheme, _, rest = challenge.strip().partition(" ")
    if scheme.lower() != "digest":
        raise ValueError(f"not a Digest challenge: {challenge!r}")
    return {name.lower(): value.strip('"') for name, value in _PARAM.findall(rest)}


def _hash(algorithm: str, text: str) -> str:
    data = text.encode()
    if algorithm.upper() == "SHA-256":
        return hashlib.sha256(data).hexdigest()
    if algorithm.upper() == "MD5":
        return hashlib.md5(data).hexdigest()
    raise ValueError(f"unsupported digest algorithm {algorithm!r}")


def authorization(
    challenge: str,
    method: str,
    uri: str,
    username: str,
    password: str,
    *,
    nc: int = 1,
    cnonce: str | None = None,
    algorithm: str | None = None,
) -> str:
    """The `Authorization` value answering `challenge` (algorithm: the challenge's by default,
    another one to try a mismatch)."""
    params = challenge_params(challenge)
    algorithm = algorithm or params.get("algorithm", "MD5")
    realm, nonce = params["realm"], params["nonce"]
    ha1 = _hash(algorithm, f"{username}:{realm}:{password}")
    ha2 = _hash(algorithm, f"{method}:{uri}")
    fields = [
        f'username="{username}"',
        f'realm="{realm}"',
        f'nonce="{nonce}"',
        f'uri="{uri}"',
    ]
    if "auth" in params.get("qop", "").split(","):
        count, cnonce = f"{nc:08x}", cnonce or secrets.token_hex(8)
        response = _hash(algorithm, f"{ha1}:{nonce}:{count}:{cnonce}:auth:{ha2}")
        fields += [f'response="{response}"', "qop=auth", f"nc={count}", f'cnonce="{cnonce}"']
    else:
        fields.append(f'response="{_hash(algorithm, f"{ha1}:{nonce}:{ha2}")}"')
    fields.append(f"algorithm={algorithm}")
    return "Digest " + ", ".join(fields)
