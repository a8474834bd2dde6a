"""Who may bind, change or remove a contact: the admission of a REGISTER, without I/O.

Three kinds of sender, by setting (README, "Trusting registrations"):

- a trusted registrar (CPMIW_TRUSTED_REGISTRARS: an S-CSCF or a P-CSCF that authenticated the
  UE already): its REGISTER is saved as it is, and a third-party REGISTER of its (a body
  carrying the UE's REGISTER or the S-CSCF's 200) binds the device it names;
- anyone else, with CPMIW_REGISTRATION=digest (the default): SIP digest authentication against
  the subscriber's credential (Kamailio `auth`), challenged first;
- anyone else, with CPMIW_REGISTRATION=trusted: refused (the proxy sits behind the S-CSCF and
  no UE registers with it directly).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from .credential import Algorithm

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class Mode(enum.Enum):
    DIGEST = "digest"
    TRUSTED = "trusted"


@dataclass(frozen=True)
class RegistrationPolicy:
    mode: Mode
    registrars: tuple[Network, ...]  # trusted registrars (addresses are /32 or /128 networks)
    algorithm: Algorithm  # the digest algorithm Kamailio's auth module challenges with
    rate: int  # REGISTERs a second one source other than a trusted registrar may send
    max_contacts: int  # contacts one AOR may hold (the registrar's max_contacts)

    def trusts(self, source: str) -> bool:
        """Whether `source` (an IP address as Kamailio writes it) is a trusted registrar."""
        try:
            address = ipaddress.ip_address(source.strip("[]"))
        except ValueError:
            return False
        return any(address in network for network in self.registrars)


def networks(items: Iterable[str]) -> tuple[Network, ...]:
    """Addresses or networks (`192.0.2.10`, `10.1.0.0/16`, `2001:db8::/32`); ValueError if not."""
    return tuple(ipaddress.ip_network(item, strict=False) for item in items)


class Step(enum.Enum):
    """What the proxy does next with a REGISTER."""

    SAVE = "save"  # from a trusted registrar: saved as it is
    SAVE_DEVICES = "save-devices"  # third-party REGISTER: the devices of its body are saved
    AUTHENTICATE = "authenticate"  # credentials present: check them, then save
    CHALLENGE = "challenge"  # no credentials: 401 with a challenge
    FOREIGN_DOMAIN = "foreign-domain"  # 403: the AOR is not in a served domain
    NOT_TRUSTED = "not-trusted"  # 403: mode trusted, and the sender is not a trusted registrar
    THIRD_PARTY_NOT_TRUSTED = "third-party-not-trusted"  # 403: a body from an untrusted sender


@dataclass(frozen=True)
class Register:
    """The facts of a REGISTER that decide its admission."""

    trusted: bool  # sent by a trusted registrar
    domain_served: bool  # its AOR (To) is in a served domain
    third_party: bool  # its body carries a registration (message/sip, multipart/mixed)
    has_credentials: bool  # an Authorization header for the AOR's realm


def admit(mode: Mode, register: Register) -> Step:
    """The next step for a REGISTER, the rate limit for untrusted senders passed."""
    if not register.domain_served:
        return Step.FOREIGN_DOMAIN
    if register.trusted:
        return Step.SAVE_DEVICES if register.third_party else Step.SAVE
    if mode is Mode.TRUSTED:
        return Step.NOT_TRUSTED
    if register.third_party:
        return Step.THIRD_PARTY_NOT_TRUSTED
    return Step.AUTHENTICATE if register.has_credentials else Step.CHALLENGE
