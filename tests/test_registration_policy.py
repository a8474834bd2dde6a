"""cpmiw.core.registration and its settings: who may register, by which step."""

from __future__ import annotations

import itertools

import pytest

from cpmiw.core.credential import Algorithm
from cpmiw.core.registration import Mode, Register, RegistrationPolicy, Step, admit, networks
from cpmiw.settings import SettingsError, load_settings


def _register(**facts: bool) -> Register:
    defaults = {"trusted": False, "domain_served": True, "third_party": False}
    return Register(**{**defaults, "has_credentials": False, **facts})


@pytest.mark.parametrize(
    ("facts", "digest", "trusted"),
    [
        ({"trusted": True}, Step.SAVE, Step.SAVE),
        ({"trusted": True, "third_party": True}, Step.SAVE_DEVICES, Step.SAVE_DEVICES),
        ({}, Step.CHALLENGE, Step.NOT_TRUSTED),
        ({"has_credentials": True}, Step.AUTHENTICATE, Step.NOT_TRUSTED),
        ({"third_party": True}, Step.THIRD_PARTY_NOT_TRUSTED, Step.NOT_TRUSTED),
        ({"third_party": True, "has_credentials": True}, Step.THIRD_PARTY_NOT_TRUSTED,
         Step.NOT_TRUSTED),
        ({"domain_served": False, "trusted": True}, Step.FOREIGN_DOMAIN, Step.FOREIGN_DOMAIN),
        ({"domain_served": False}, Step.FOREIGN_DOMAIN, Step.FOREIGN_DOMAIN),
    ],
)  # fmt: skip
def test_admission(facts: dict[str, bool], digest: Step, trusted: Step) -> None:
    assert admit(Mode.DIGEST, _register(**facts)) is digest
    assert admit(Mode.TRUSTED, _register(**facts)) is trusted


def test_nothing_untrusted_is_saved_without_credentials() -> None:
    """Whatever the facts, a REGISTER binds unchecked only from a trusted registrar."""
    for mode, values in itertools.product(Mode, itertools.product([False, True], repeat=4)):
        register = Register(*values)
        step = admit(mode, register)
        if step in (Step.SAVE, Step.SAVE_DEVICES):
            assert register.trusted and register.domain_served
        if step is Step.AUTHENTICATE:
            assert register.has_credentials and mode is Mode.DIGEST


def _policy(registrars: str) -> RegistrationPolicy:
    return RegistrationPolicy(Mode.DIGEST, networks(registrars.split()), Algorithm.MD5, 20, 10)


@pytest.mark.parametrize(
    ("registrars", "source", "trusted"),
    [
        ("192.0.2.10", "192.0.2.10", True),
        ("192.0.2.10", "192.0.2.11", False),
        ("10.1.0.0/16", "10.1.255.7", True),
        ("10.1.0.0/16", "10.2.0.1", False),
        ("2001:db8::/32", "[2001:db8::5]", True),
        ("2001:db8::/32", "2001:db9::5", False),
        ("192.0.2.10", "not-an-address", False),
        ("", "127.0.0.1", False),
    ],
)
def test_trusted_registrars_are_addresses_or_networks(
    registrars: str, source: str, trusted: bool
) -> None:
    assert _policy(registrars).trusts(source) is trusted


def test_registration_settings_default_to_digest() -> None:
    policy = load_settings({}).registration
    assert policy == RegistrationPolicy(Mode.DIGEST, (), Algorithm.MD5, 20, 10)


def test_registration_settings() -> None:
    policy = load_settings(
        {
            "CPMIW_REGISTRATION": "trusted",
            "CPMIW_TRUSTED_REGISTRARS": " 10.0.0.0/8, 192.0.2.7,",
            "CPMIW_DIGEST_ALGORITHM": "SHA-256",
            "CPMIW_REGISTER_RATE": "5",
            "CPMIW_MAX_CONTACTS": "3",
        }
    ).registration
    assert policy == RegistrationPolicy(
        Mode.TRUSTED, networks(["10.0.0.0/8", "192.0.2.7"]), Algorithm.SHA256, 5, 3
    )


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"CPMIW_REGISTRATION": "open"}, "CPMIW_REGISTRATION='open': expected one of digest"),
        ({"CPMIW_REGISTRATION": "trusted"}, "no CPMIW_TRUSTED_REGISTRARS"),
        ({"CPMIW_TRUSTED_REGISTRARS": "10.0.0.300"}, "CPMIW_TRUSTED_REGISTRARS='10.0.0.300'"),
        ({"CPMIW_DIGEST_ALGORITHM": "SHA-512"}, "expected one of MD5, SHA-256"),
        ({"CPMIW_REGISTER_RATE": "0"}, "at least 1"),
        ({"CPMIW_MAX_CONTACTS": "0"}, "at least 1"),
        ({"CPMIW_MAX_CONTACTS": "1001"}, "from 0 to 1000"),
    ],
)
def test_bad_registration_settings_are_named(env: dict[str, str], error: str) -> None:
    with pytest.raises(SettingsError, match=error.replace("(", r"\(")):
        load_settings(env)
