"""REGISTER: who may bind contacts, and the registered devices routing reads.

kamailio.cfg hands every REGISTER to `Admission.admit()` first (README, "Trusting
registrations"): a sender other than a trusted registrar passes a per-source rate limit
(Kamailio `pipelimit`) and SIP digest authentication (Kamailio `auth`, against the subscriber's
HA1 read from Redis); a trusted registrar's REGISTER is saved as it is, and its third-party
REGISTER gets the Contact (and Path) of the device its body names before it is saved. What may
not bind is answered here (401, 403, 400, 503); what may is saved by kamailio.cfg (registrar
`save()`, without replying, at most CPMIW_MAX_CONTACTS contacts an AOR).

On each successful REGISTER the plugin then notes the feature parameters of each contact (htable
`caps`: what its device takes) and rewrites the AOR's summary (htable `devices`, core/devices.py)
before the registrar's 200 is sent; routing reads the summary in one call, or usrloc when there
is none.
"""

from __future__ import annotations

import functools
import time
import traceback

import KSR  # provided by app_python3 inside Kamailio

from .. import metrics
from ..core import devices, thirdparty
from ..core.credential import CredentialError, realm_of
from ..core.devices import Device
from ..core.identity import IdentityError, canonical
from ..core.message import encode
from ..core.registration import Register, Step, admit
from ..core.services import DEVICE_TABLE
from ..settings import Settings
from ..store.credentials import CredentialReader
from ..store.redis import StoreError
from .ksr import all_lines, append_header, exact, pv

DEFAULT_EXPIRES = 3600  # s: a third-party REGISTER without Expires (the registrar's default)
# The registered contacts fetched by reg_fetch_contacts(..., "cpmiw"): count, then each one's.
CONTACT_COUNT = "$ulc(cpmiw=>count)"


@functools.cache
def _contact(attribute: str, index: int) -> str:
    return f"$(ulc(cpmiw=>{attribute})[{index}])"


def _device(index: int) -> Device:
    """The contact fetched at `index`, with the feature parameters its device registered."""
    get = KSR.pv.get
    uri = pv(_contact("addr", index))
    return Device(
        uri,
        int(get(_contact("q", index)) or 0),
        str(KSR.htable.sht_get(DEVICE_TABLE, uri) or ""),
        int(get(_contact("expires", index)) or 0),
    )


def _contacts(aor: str) -> list[Device]:
    """Each contact of `aor` in usrloc."""
    if KSR.registrar.reg_fetch_contacts("location", aor, "cpmiw") < 0:
        return []
    try:
        return [_device(index) for index in range(int(KSR.pv.get(CONTACT_COUNT) or 0))]
    finally:
        KSR.registrar.reg_free_contacts("cpmiw")


class RegisteredDevices:
    """The recipient's registered devices (a `routing.Registrations` for one worker), and the
    summary the last answer was read from."""

    def __init__(self) -> None:
        self.summary: tuple[str, str] | None = None  # (AOR, summary text) of the last answer

    def __call__(self, aor: str) -> list[Device]:
        self.summary = None
        text = KSR.htable.sht_get(devices.SUMMARY_TABLE, devices.usrloc_key(aor))
        if text is not None:
            try:
                found = devices.registered(str(text), time.time())
            except ValueError:
                KSR.warn(f"cpmiw: registrations of {aor} read from usrloc: bad summary\n")
            else:
                self.summary = aor, str(text)
                return found
        return _contacts(aor)


def forget(aor: str) -> None:
    """Drops the AOR's summary (its contacts went behind the registrar's back): usrloc from now."""
    KSR.htable.sht_rm(devices.SUMMARY_TABLE, devices.usrloc_key(aor))


def registered() -> None:
    """After a REGISTER was saved: what each contact's device registered, and the AOR's summary."""
    aor = pv("$tu")
    try:
        for uri, features in devices.registered_contacts(pv(all_lines("Contact"))):
            KSR.htable.sht_sets(DEVICE_TABLE, uri, features)
        contacts = _contacts(aor)
    except Exception:
        error = traceback.format_exc()
        KSR.err(f"cpmiw: registration tags not kept call-id={pv('$ci')}: {error}\n")
        contacts = []  # no summary then: routing reads usrloc itself
    if contacts:
        KSR.htable.sht_sets(
            devices.SUMMARY_TABLE, devices.usrloc_key(aor), devices.summary(contacts)
        )
    else:
        forget(aor)


# Kamailio auth return codes (auth/api.h) after which the device is challenged with a new nonce
# marked stale (RFC 2617 3.2.1: it answers again with the same password, asking no one).
_STALE = {-4, -6}  # AUTH_STALE_NONCE, AUTH_NONCE_REUSED
_QOP_AUTH, _STALE_FLAG = 1, 16  # auth_challenge() flags
LIMITED_RETRY_AFTER = 5  # s: what a rate-limited sender is told to wait
LIMIT_LOG_EVERY = 10.0  # s: a source over the rate limit is logged at most this often
_FORBIDDEN = {
    Step.FOREIGN_DOMAIN: "Forbidden (domain not served)",
    Step.NOT_TRUSTED: "Forbidden (registration through a trusted registrar only)",
    Step.THIRD_PARTY_NOT_TRUSTED: "Forbidden (third-party registration not trusted)",
}


class Admission:
    """Decides, per REGISTER, whether the registrar may save it; answers it when not."""

    def __init__(self, settings: Settings, credentials: CredentialReader) -> None:
        self._settings = settings
        self._policy = settings.registration
        self._credentials = credentials
        self._limited_logged: dict[str, float] = {}  # source -> when last logged

    def admit(self) -> bool:
        """True: kamailio.cfg saves the REGISTER; False: it was answered here (an unexpected
        error is logged and answered 500)."""
        try:
            return self._admit()
        except Exception:
            KSR.err(f"cpmiw: internal error call-id={pv('$ci')}: {traceback.format_exc()}\n")
            KSR.sl.send_reply(500, "Internal Server Error")
            metrics.count_registration("error")
            return False

    def _admit(self) -> bool:
        source = pv("$si")
        trusted = self._policy.trusts(source)
        if (
            not trusted
            and KSR.pipelimit.pl_check_limit(f"register:{source}", "TAILDROP", self._policy.rate)
            < 0
        ):
            self._limited(source)
            return False
        try:
            aor = canonical(pv("$tu"))
        except IdentityError:
            aor = ""
        realm = realm_of(aor) if aor.startswith("sip:") else ""
        register = Register(
            trusted=trusted,
            domain_served=realm in self._settings.rules.domains,
            third_party=thirdparty.is_third_party(pv("$hdr(Content-Type)")),
            has_credentials=KSR.auth.has_credentials(realm) > 0 if realm else False,
        )
        step = admit(self._policy.mode, register)
        if step is Step.SAVE:
            metrics.count_registration("trusted")
            return True
        if step is Step.SAVE_DEVICES:
            return self._third_party(aor)
        if step is Step.CHALLENGE:
            KSR.auth.auth_challenge(realm, _QOP_AUTH)
            metrics.count_registration("challenged")
            return False
        if step is Step.AUTHENTICATE:
            return self._authenticate(aor, realm)
        self._refuse(403, _FORBIDDEN[step], "forbidden", f"{aor or pv('$tu')} from {source}")
        return False

    def _authenticate(self, aor: str, realm: str) -> bool:
        """Checks the REGISTER's digest response against the subscriber's HA1."""
        try:
            credential = self._credentials.get(aor)
        except StoreError as error:
            return self._unavailable(f"{aor}: {error}")
        except CredentialError as error:  # this subscriber's only: no breaker opened
            return self._unavailable(f"stored credential of {aor} is invalid: {error}")
        algorithm = self._policy.algorithm
        ha1 = credential.hash(algorithm) if credential else None
        if credential is None:
            return self._challenge_again(realm, False, f"{aor}: no credential")
        if ha1 is None:
            return self._challenge_again(realm, False, f"{aor}: no {algorithm.value} HA1")
        if pv("$aU") != credential.username:
            return self._challenge_again(realm, False, f"{aor}: another username")
        code = KSR.auth.pv_auth_check(realm, ha1, 1, 0)  # 1: the password given is an HA1
        if code > 0:
            metrics.count_registration("authenticated")
            return True
        return self._challenge_again(realm, code in _STALE, f"{aor}: auth code {code}")

    def _unavailable(self, why: str) -> bool:
        """The credential could not be read: 503, come back later (the password may be right)."""
        KSR.hdr.append_to_reply(f"Retry-After: {self._settings.retry_after}\r\n")
        self._refuse(503, "Service Unavailable", "unavailable", why)
        return False

    def _challenge_again(self, realm: str, stale: bool, why: str) -> bool:
        """Credentials that do not hold: a new challenge (the device may try once more)."""
        if not stale:
            KSR.info(f"cpmiw: REGISTER not authenticated call-id={pv('$ci')} {why}\n")
        KSR.auth.auth_challenge(realm, _QOP_AUTH | (_STALE_FLAG if stale else 0))
        metrics.count_registration("stale" if stale else "refused")
        return False

    def _third_party(self, aor: str) -> bool:
        """A trusted registrar's REGISTER with a body: the devices it names are saved instead
        of the registrar's own Contact (the message is rewritten in place for save())."""
        expires_header = pv("$hdr(Expires)").strip()
        expires = int(expires_header) if expires_header.isdigit() else DEFAULT_EXPIRES
        try:
            found = thirdparty.devices(pv("$hdr(Content-Type)"), encode(exact("$rb")), expires)
        except thirdparty.ThirdPartyError as error:
            reason = "Bad Request (third-party REGISTER)"
            self._refuse(400, reason, "bad-request", f"{aor}: {error}")
            return False
        KSR.hdr.remove("Contact")
        append_header("Contact", found.contact)  # the device's bytes, whatever they are
        if found.path:
            KSR.hdr.remove("Path")
            append_header("Path", found.path)
        KSR.textopsx.msg_apply_changes()
        metrics.count_registration("third-party")
        return True

    def _refuse(self, status: int, reason: str, outcome: str, why: str) -> None:
        KSR.warn(f"cpmiw: REGISTER answered {status} call-id={pv('$ci')} {why}\n")
        KSR.sl.send_reply(status, reason)
        metrics.count_registration(outcome)

    def _limited(self, source: str) -> None:
        """Over the rate limit: 503 with Retry-After; logged once a while per source."""
        now = time.monotonic()
        if now - self._limited_logged.get(source, -LIMIT_LOG_EVERY) >= LIMIT_LOG_EVERY:
            if len(self._limited_logged) > 1024:  # a flood from many sources: forget the old
                self._limited_logged.clear()
            self._limited_logged[source] = now
            KSR.warn(f"cpmiw: REGISTERs from {source} over {self._policy.rate}/s answered 503\n")
        KSR.hdr.append_to_reply(f"Retry-After: {LIMITED_RETRY_AFTER}\r\n")
        KSR.sl.send_reply(503, "Service Unavailable (too many registrations)")
        metrics.count_registration("limited")
