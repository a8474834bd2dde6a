"""Settings, read once from the environment (the README lists every variable).

Kamailio passes its environment to the embedded interpreter, so one set of CPMIW_* variables
configures both kamailio.cfg (through #!defenv) and the plugin.
"""

from __future__ import annotations

import enum
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from .core.credential import Algorithm
from .core.decision import Action, Decision, FileTransferToSms, Policy
from .core.identity import host_of
from .core.registration import Mode, RegistrationPolicy, networks
from .core.routing import Rules


class SettingsError(ValueError):
    """A CPMIW_* variable with a value the plugin cannot use; the message names it."""


class DecisionLog(enum.Enum):
    """Which routing decisions get an INFO log line; the metrics count every one of them.

    `rejects` (the default) logs what a caller hears back as an error from the plugin: at a
    carrier's rates a line for every delivered message would flood the log, and `cpmiw explain`
    reproduces any single decision. `all` is for troubleshooting.
    """

    ALL = "all"
    REJECTS = "rejects"
    OFF = "off"

    def logs(self, decision: Decision) -> bool:
        if self is DecisionLog.REJECTS:
            return decision.action is Action.REJECT
        return self is DecisionLog.ALL


@dataclass(frozen=True)
class Settings:
    sip_addr: str
    sip_port: int
    rules: Rules  # what routing.plan() reads
    redis_url: str
    redis_timeout: float  # seconds
    redis_backoff: float  # s without Redis calls after a failure (circuit breaker)
    redis_slow: float  # s a reply may take; a later one is a failure (opens the breaker)
    cache_entries: int  # profiles cached per worker process
    cache_max_age: float  # s after which a cached profile is fetched again
    memo_ttl: int  # s a plain delivery stays remembered for kamailio.cfg to replay (0: never)
    marker_ttl: int
    peers: tuple[str, ...]  # the other proxies' DMQ listeners (host:port); empty: one proxy
    route_host: str  # host[:port] of the route back from an AS (a name of every proxy)
    retry_after: int
    as_timeout: int  # ms an AS has to answer before its default handling applies
    fallback_timeout: int  # ms the devices have to answer before the SMS fallback (0: tm's)
    conversation_ttl: int  # s the CPM conversation of an SMS interworking is remembered
    shadow: bool  # decide, log and count, but deliver everything unchanged
    decision_log: DecisionLog
    registration: RegistrationPolicy  # who may register (README, "Trusting registrations")


def _sip_uri(env: Mapping[str, str], name: str, default: str) -> str:
    value = env.get(name, default)
    if not value.lower().startswith(("sip:", "sips:")) or not host_of(value):
        raise SettingsError(f"{name}={value!r}: expected a SIP URI such as sip:host:port")
    return value


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, default)
    if value not in allowed:
        raise SettingsError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, most: int = 10**9) -> int:
    value = env.get(name, str(default))
    if not re.fullmatch(r"[0-9]{1,10}", value) or int(value) > most:
        raise SettingsError(f"{name}={value!r}: expected a whole number from 0 to {most}")
    return int(value)


def _list(env: Mapping[str, str], name: str, default: str) -> frozenset[str]:
    return frozenset(
        item.strip().lower() for item in env.get(name, default).split(",") if item.strip()
    )


def _registration(env: Mapping[str, str]) -> RegistrationPolicy:
    name = "CPMIW_TRUSTED_REGISTRARS"
    try:
        registrars = networks(sorted(_list(env, name, "")))
    except ValueError as error:
        raise SettingsError(f"{name}={env.get(name)!r}: {error}") from None
    mode = Mode(_choice(env, "CPMIW_REGISTRATION", "digest", tuple(m.value for m in Mode)))
    if mode is Mode.TRUSTED and not registrars:
        raise SettingsError(f"CPMIW_REGISTRATION=trusted: no {name}, nobody could register")
    rate = _int(env, "CPMIW_REGISTER_RATE", 20)
    most = _int(env, "CPMIW_MAX_CONTACTS", 10, most=1000)
    if not rate or not most:
        raise SettingsError("CPMIW_REGISTER_RATE and CPMIW_MAX_CONTACTS must be at least 1")
    algorithms = tuple(a.value for a in Algorithm)
    return RegistrationPolicy(
        mode=mode,
        registrars=registrars,
        algorithm=Algorithm(_choice(env, "CPMIW_DIGEST_ALGORITHM", "MD5", algorithms)),
        rate=rate,
        max_contacts=most,
    )


SECRET_LENGTH = 16  # characters, at least, of a configured marker secret
_PEER = re.compile(r"(?:[0-9]{1,3}\.){3}[0-9]{1,3}:[0-9]{1,5}")


def _peers(env: Mapping[str, str]) -> tuple[str, ...]:
    """CPMIW_PEERS: the other proxies' DMQ listeners, `address:port` (IPv4: the DMQ port only
    accepts peers by address, kamailio.cfg)."""
    peers = tuple(item.strip() for item in env.get("CPMIW_PEERS", "").split(",") if item.strip())
    for peer in peers:
        if not _PEER.fullmatch(peer) or not 0 < int(peer.rpartition(":")[2]) < 65536:
            raise SettingsError(
                f"CPMIW_PEERS: {peer!r}: expected address:port, such as 10.0.0.2:5090"
            )
    return peers


def _secrets(env: Mapping[str, str], peers: tuple[str, ...]) -> tuple[bytes, ...]:
    """The AS-marker secrets: the current one first (it issues), then CPMIW_SECRET_PREVIOUS
    (still accepted while a rotation reaches every proxy). Without CPMIW_SECRET a single proxy
    makes a random one at each start; several proxies must share theirs."""
    current = env.get("CPMIW_SECRET", "")
    previous = env.get("CPMIW_SECRET_PREVIOUS", "")
    if not current:
        if peers:
            raise SettingsError(
                "CPMIW_PEERS names other proxies but CPMIW_SECRET is not set: set the same"
                " CPMIW_SECRET on every proxy, so that an AS marker one of them issues is"
                " honoured by the others"
            )
        if previous:
            raise SettingsError("CPMIW_SECRET_PREVIOUS is set without CPMIW_SECRET")
        return (secrets.token_hex(32).encode(),)
    for name, value in (("CPMIW_SECRET", current), ("CPMIW_SECRET_PREVIOUS", previous)):
        if value and len(value) < SECRET_LENGTH:
            raise SettingsError(f"{name}: at least {SECRET_LENGTH} characters expected")
    return tuple(value.encode() for value in (current, previous) if value)


def load_settings(env: Mapping[str, str] = os.environ) -> Settings:
    im_as = _sip_uri(env, "CPMIW_IM_AS", "sip:127.0.0.3:5060")
    ip_sm_gw = _sip_uri(env, "CPMIW_IP_SM_GW", "sip:127.0.0.4:5060")
    policy = Policy(
        im_as=im_as,
        ip_sm_gw=ip_sm_gw,
        file_transfer_to_sms=FileTransferToSms(
            _choice(env, "CPMIW_FT_TO_SMS", "reject", ("reject", "ip_sm_gw"))
        ),
    )
    peers = _peers(env)
    as_addresses = _list(env, "CPMIW_AS_ADDRESSES", f"{host_of(im_as)},{host_of(ip_sm_gw)}")
    sip_addr = env.get("CPMIW_SIP_ADDR", "127.0.0.1")
    sip_port = _int(env, "CPMIW_SIP_PORT", 5060, most=65535)
    return Settings(
        sip_addr=sip_addr,
        sip_port=sip_port,
        rules=Rules(
            domains=_list(env, "CPMIW_DOMAINS", "ims.example.net"),
            policy=policy,
            as_addresses=as_addresses,
            trusted_addresses=as_addresses | _list(env, "CPMIW_TRUSTED_ADDRESSES", ""),
            secrets=_secrets(env, peers),
            deliver_on_profile_error=_choice(
                env, "CPMIW_ON_PROFILE_ERROR", "reject", ("reject", "deliver")
            )
            == "deliver",
            answer_options=_choice(env, "CPMIW_OPTIONS", "answer", ("answer", "relay")) == "answer",
        ),
        redis_url=env.get("CPMIW_REDIS_URL", "redis://127.0.0.1:6379/0"),
        redis_timeout=_int(env, "CPMIW_REDIS_TIMEOUT_MS", 50) / 1000,
        redis_backoff=_int(env, "CPMIW_REDIS_BACKOFF_MS", 500) / 1000,
        redis_slow=_int(env, "CPMIW_REDIS_SLOW_MS", 10) / 1000,
        cache_entries=_int(env, "CPMIW_CACHE_ENTRIES", 20_000),
        cache_max_age=_int(env, "CPMIW_CACHE_MAX_AGE", 300),
        memo_ttl=_int(env, "CPMIW_MEMO_TTL", 3600, most=86400),
        marker_ttl=_int(env, "CPMIW_MARKER_TTL", 32, most=300),
        peers=peers,
        route_host=env.get("CPMIW_ROUTE_HOST") or f"{sip_addr}:{sip_port}",
        retry_after=_int(env, "CPMIW_RETRY_AFTER", 30),
        as_timeout=_int(env, "CPMIW_AS_TIMEOUT_MS", 2000),
        fallback_timeout=_int(env, "CPMIW_FALLBACK_MS", 5000),
        conversation_ttl=_int(env, "CPMIW_CONVERSATION_TTL", 86400),
        shadow=_choice(env, "CPMIW_SHADOW", "off", ("off", "on")) == "on",
        decision_log=DecisionLog(
            _choice(env, "CPMIW_DECISION_LOG", "rejects", tuple(d.value for d in DecisionLog))
        ),
        registration=_registration(env),
    )


# The running proxy publishes its CPMIW_* environment in this shared variable (`pv.shvGet` over
# the control socket), so that `cpmiw explain` and operators decide with the proxy's settings.
PUBLISHED_VARIABLE = "cpmiw_settings"
_SECRET_NAMES = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|_KEY\b")


def public_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The CPMIW_* variables of `env` without secrets: secret variables left out, passwords in
    URLs masked. `load_settings` of the result gives the same settings but the secret."""
    return {
        name: redacted(value) if "://" in value else value
        for name, value in sorted(env.items())
        if name.startswith("CPMIW_") and not _SECRET_NAMES.search(name)
    }


_PASSWORD_PARAMETER = re.compile(r"([?&][^=&#]*password=)[^&#]*", re.IGNORECASE)


def redacted(url: str) -> str:
    """`url` fit to be printed or logged: the password in it, and any `...password=` query
    parameter (a Sentinel's), shown as `***`. Whatever a password holds (an unescaped `/`,
    `?` or `@`), nothing of it is left: the user information is taken to end at the last `@`
    (a URL with an `@` further on is cut short, never shown whole)."""
    scheme, sep, rest = url.partition("://")
    at = rest.rfind("@")
    if at >= 0 and ":" in rest[:at]:
        rest = f"{rest[:at].partition(':')[0]}:***{rest[at:]}"
    return scheme + sep + _PASSWORD_PARAMETER.sub(r"\1***", rest)
