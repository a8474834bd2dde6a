"""cpmiw.settings: CPMIW_* environment variables."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cpmiw.core.decision import FileTransferToSms, Policy
from cpmiw.settings import DecisionLog, Settings, SettingsError, load_settings


def test_default_policy() -> None:
    assert load_settings({}).rules.policy == Policy(
        im_as="sip:127.0.0.3:5060",
        ip_sm_gw="sip:127.0.0.4:5060",
        file_transfer_to_sms=FileTransferToSms.REJECT,
    )


def test_default_secret_is_random() -> None:
    (first,), (second,) = load_settings({}).rules.secrets, load_settings({}).rules.secrets
    assert len(first) >= 32
    assert first != second
    assert load_settings({"CPMIW_SECRET": ""}).rules.secrets[0] not in (b"", first, second)


def test_the_current_secret_issues_and_the_previous_is_accepted() -> None:
    env = {"CPMIW_SECRET": "n" * 16, "CPMIW_SECRET_PREVIOUS": "p" * 16}
    assert load_settings(env).rules.secrets == (b"n" * 16, b"p" * 16)


def test_several_proxies_need_a_shared_secret() -> None:
    peers = {"CPMIW_PEERS": "10.0.0.2:5090, 10.0.0.3:5090"}
    with pytest.raises(SettingsError, match="CPMIW_SECRET is not set: set the same CPMIW_SECRET"):
        load_settings(peers)
    settings = load_settings({**peers, "CPMIW_SECRET": "s" * 32})
    assert settings.peers == ("10.0.0.2:5090", "10.0.0.3:5090")
    assert settings.rules.secrets == (b"s" * 32,)


@pytest.mark.parametrize(
    "env",
    [
        {"CPMIW_SECRET": "short"},
        {"CPMIW_SECRET": "s" * 16, "CPMIW_SECRET_PREVIOUS": "short"},
        {"CPMIW_SECRET_PREVIOUS": "p" * 16},
        {"CPMIW_PEERS": "peer.example.net:5090", "CPMIW_SECRET": "s" * 16},
        {"CPMIW_PEERS": "10.0.0.2", "CPMIW_SECRET": "s" * 16},
        {"CPMIW_PEERS": "10.0.0.2:0", "CPMIW_SECRET": "s" * 16},
    ],
)
def test_bad_secrets_and_peers_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(SettingsError, match=r"CPMIW_SECRET|CPMIW_PEERS") as error:
        load_settings(env)
    assert "s" * 16 not in str(error.value)  # a secret is never shown


Read = Callable[[Settings], object]
# (variable, value set, what it sets, expected, expected when unset)
VARIABLES: list[tuple[str, str, Read, object, object]] = [
    ("CPMIW_SIP_ADDR", "10.0.0.5", lambda s: s.sip_addr, "10.0.0.5", "127.0.0.1"),
    ("CPMIW_SIP_PORT", "5070", lambda s: s.sip_port, 5070, 5060),
    ("CPMIW_DOMAINS", " IMS.Example.NET, ,other.example.org,", lambda s: s.rules.domains,
     {"ims.example.net", "other.example.org"}, {"ims.example.net"}),
    ("CPMIW_REDIS_URL", "redis://db.example.net:6390/2", lambda s: s.redis_url,
     "redis://db.example.net:6390/2", "redis://127.0.0.1:6379/0"),
    ("CPMIW_REDIS_TIMEOUT_MS", "250", lambda s: s.redis_timeout, 0.25, 0.05),
    ("CPMIW_REDIS_BACKOFF_MS", "1500", lambda s: s.redis_backoff, 1.5, 0.5),
    ("CPMIW_CACHE_ENTRIES", "10", lambda s: s.cache_entries, 10, 20_000),
    ("CPMIW_CACHE_MAX_AGE", "60", lambda s: s.cache_max_age, 60, 300),
    ("CPMIW_IM_AS", "sip:im-as.example.net", lambda s: s.rules.policy.im_as,
     "sip:im-as.example.net", "sip:127.0.0.3:5060"),
    ("CPMIW_IP_SM_GW", "sip:gw@10.1.2.3:5080;transport=tcp", lambda s: s.rules.policy.ip_sm_gw,
     "sip:gw@10.1.2.3:5080;transport=tcp", "sip:127.0.0.4:5060"),
    ("CPMIW_FT_TO_SMS", "ip_sm_gw", lambda s: s.rules.policy.file_transfer_to_sms,
     FileTransferToSms.IP_SM_GW, FileTransferToSms.REJECT),
    ("CPMIW_AS_ADDRESSES", "10.9.9.9, AS.Example.NET", lambda s: s.rules.as_addresses,
     {"10.9.9.9", "as.example.net"}, {"127.0.0.3", "127.0.0.4"}),
    ("CPMIW_TRUSTED_ADDRESSES", "10.7.7.7,SBC.example.net", lambda s: s.rules.trusted_addresses,
     {"10.7.7.7", "sbc.example.net", "127.0.0.3", "127.0.0.4"}, {"127.0.0.3", "127.0.0.4"}),
    ("CPMIW_SECRET", "s3cret-s3cret-s3cret", lambda s: s.rules.secrets[0], b"s3cret-s3cret-s3cret",
     None),
    ("CPMIW_ROUTE_HOST", "proxies.example.net", lambda s: s.route_host, "proxies.example.net",
     "127.0.0.1:5060"),
    ("CPMIW_MARKER_TTL", "5", lambda s: s.marker_ttl, 5, 32),
    ("CPMIW_ON_PROFILE_ERROR", "deliver", lambda s: s.rules.deliver_on_profile_error, True, False),
    ("CPMIW_RETRY_AFTER", "120", lambda s: s.retry_after, 120, 30),
    ("CPMIW_AS_TIMEOUT_MS", "500", lambda s: s.as_timeout, 500, 2000),
    ("CPMIW_FALLBACK_MS", "1500", lambda s: s.fallback_timeout, 1500, 5000),
    ("CPMIW_OPTIONS", "relay", lambda s: s.rules.answer_options, False, True),
    ("CPMIW_CONVERSATION_TTL", "3600", lambda s: s.conversation_ttl, 3600, 86400),
    ("CPMIW_SHADOW", "on", lambda s: s.shadow, True, False),
    ("CPMIW_DECISION_LOG", "all", lambda s: s.decision_log, DecisionLog.ALL, DecisionLog.REJECTS),
]  # fmt: skip
VARIABLE_IDS = [name for name, *_ in VARIABLES]
DEFAULTS = [(name, read, default) for name, _, read, _, default in VARIABLES if default is not None]


@pytest.mark.parametrize(
    ("name", "value", "read", "expected", "default"), VARIABLES, ids=VARIABLE_IDS
)
def test_variable(name: str, value: str, read: Read, expected: object, default: object) -> None:
    assert read(load_settings({name: value})) == expected


@pytest.mark.parametrize(("name", "read", "default"), DEFAULTS, ids=[d[0] for d in DEFAULTS])
def test_default(name: str, read: Read, default: object) -> None:
    assert read(load_settings({})) == default


@pytest.mark.parametrize(
    ("im_as", "ip_sm_gw", "expected"),
    [
        pytest.param("sip:im-as.example.net:5070;transport=tcp", "sip:gw@10.1.2.3",
                     {"im-as.example.net", "10.1.2.3"}, id="port-params-user-dropped"),
        pytest.param("sips:as.example.net", "sip:as.example.net:5080",
                     {"as.example.net"}, id="same-host"),
        pytest.param("sip:IM-AS.Example.NET", "sip:10.1.2.3", {"im-as.example.net", "10.1.2.3"},
                     id="case-folded"),
        pytest.param("sip:[2001:db8::3]:5060", "sip:10.1.2.3", {"[2001:db8::3]", "10.1.2.3"},
                     id="ipv6"),
    ],
)  # fmt: skip
def test_as_addresses_default_to_the_as_hosts(
    im_as: str, ip_sm_gw: str, expected: set[str]
) -> None:
    settings = load_settings({"CPMIW_IM_AS": im_as, "CPMIW_IP_SM_GW": ip_sm_gw})
    assert settings.rules.as_addresses == expected


def test_explicit_as_addresses_win_and_are_trusted() -> None:
    env = {"CPMIW_IM_AS": "sip:as.example.net", "CPMIW_AS_ADDRESSES": "10.0.0.9"}
    settings = load_settings(env)
    assert settings.rules.as_addresses == {"10.0.0.9"}
    assert settings.rules.as_targets == {("as.example.net", 5060), ("127.0.0.4", 5060)}
    assert settings.rules.trusted_addresses == {"10.0.0.9"}


NUMBERS = [name for name, value, *_ in VARIABLES if value.isdigit()]
CHOICES = [
    "CPMIW_FT_TO_SMS", "CPMIW_ON_PROFILE_ERROR", "CPMIW_OPTIONS", "CPMIW_SHADOW",
    "CPMIW_DECISION_LOG",
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "value"),
    [
        *[(name, value) for name in NUMBERS for value in ("abc", "", "-1", "1.5", " 30")],
        *[(name, value) for name in CHOICES for value in ("", "yes", "REJECT", "ON")],
        pytest.param("CPMIW_SIP_PORT", "70000"),
        pytest.param("CPMIW_SIP_PORT", "²"),
        pytest.param("CPMIW_RETRY_AFTER", "9" * 5000),
        pytest.param("CPMIW_IM_AS", "im-as.example.net"),
        pytest.param("CPMIW_IP_SM_GW", "http://gw.example.net"),
    ],
    ids=lambda v: v if len(v) < 30 else "huge",
)  # fmt: skip
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(SettingsError, match=name):
        load_settings({name: value})
