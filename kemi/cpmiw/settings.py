"""Settings, read once from the environment (the README lists every variable).

Kamailio passes its environment to the embedded interpreter, so one set of CPMIW_* variables
configures both kamailio.cfg (through #!defenv) and the plugin.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from .decision import FileTransferToSms, Policy


class SettingsError(ValueError):
    """A CPMIW_* variable with a value the plugin cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    sip_addr: str
    sip_port: int
    domains: frozenset[str]
    redis_url: str
    redis_timeout: float  # seconds
    policy: Policy
    as_addresses: frozenset[str]
    secret: bytes
    marker_ttl: int
    deliver_on_profile_error: bool
    retry_after: int

    @property
    def as_hosts(self) -> frozenset[str]:
        """Hosts of the default ASes: requests addressed to them are relayed, not routed."""
        return frozenset(_host_of(uri) for uri in (self.policy.im_as, self.policy.ip_sm_gw))


def _host_of(uri: str) -> str:
    hostport = uri.split(":", 1)[1].split(";", 1)[0].rsplit("@", 1)[-1]
    return hostport.rsplit(":", 1)[0] if hostport.count(":") == 1 else hostport


def _choice(env: Mapping[str, str], name: str, default: str, allowed: tuple[str, ...]) -> str:
    value = env.get(name, default)
    if value not in allowed:
        raise SettingsError(f"{name}={value!r}: expected one of {', '.join(allowed)}")
    return value


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    value = env.get(name, str(default))
    if not value.isdigit():
        raise SettingsError(f"{name}={value!r}: expected a whole number")
    return int(value)


def _list(env: Mapping[str, str], name: str, default: str) -> frozenset[str]:
    return frozenset(
        item.strip().lower() for item in env.get(name, default).split(",") if item.strip()
    )


def load_settings(env: Mapping[str, str] = os.environ) -> Settings:
    im_as = env.get("CPMIW_IM_AS", "sip:127.0.0.3:5060")
    ip_sm_gw = env.get("CPMIW_IP_SM_GW", "sip:127.0.0.4:5060")
    policy = Policy(
        im_as=im_as,
        ip_sm_gw=ip_sm_gw,
        file_transfer_to_sms=FileTransferToSms(
            _choice(env, "CPMIW_FT_TO_SMS", "reject", ("reject", "ip_sm_gw"))
        ),
    )
    secret = env.get("CPMIW_SECRET") or secrets.token_hex(32)
    return Settings(
        sip_addr=env.get("CPMIW_SIP_ADDR", "127.0.0.1"),
        sip_port=_int(env, "CPMIW_SIP_PORT", 5060),
        domains=_list(env, "CPMIW_DOMAINS", "ims.example.net"),
        redis_url=env.get("CPMIW_REDIS_URL", "redis://127.0.0.1:6379/0"),
        redis_timeout=_int(env, "CPMIW_REDIS_TIMEOUT_MS", 50) / 1000,
        policy=policy,
        as_addresses=_list(env, "CPMIW_AS_ADDRESSES", f"{_host_of(im_as)},{_host_of(ip_sm_gw)}"),
        secret=secret.encode(),
        marker_ttl=_int(env, "CPMIW_MARKER_TTL", 32),
        deliver_on_profile_error=_choice(
            env, "CPMIW_ON_PROFILE_ERROR", "reject", ("reject", "deliver")
        )
        == "deliver",
        retry_after=_int(env, "CPMIW_RETRY_AFTER", 30),
    )
