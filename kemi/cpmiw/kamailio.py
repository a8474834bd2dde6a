"""The Kamailio adapter: the only module that imports KSR.

kamailio.cfg handles SIP plumbing (sanity, in-dialog loose routing, CANCEL, REGISTER) and calls
`python_exec("route_initial")` for every other initial request. This module reads the facts of
the request, asks `routing.plan()` what to do and applies the plan with tm / sl / hdr /
registrar. Every request leaves here answered or relayed: an unexpected exception is logged and
answered 500.
"""

from __future__ import annotations

import functools
import sys
import time
import traceback
from dataclasses import replace

import KSR  # provided by app_python3 inside Kamailio

from . import conversation, devices, marker, metrics
from .cache import CachedProfiles
from .classify import ServiceHeaders, registered_contacts
from .conversation import Conversation, ConversationStore
from .decision import NOT_REGISTERED, Action, Decision
from .identity import IdentityError, canonical
from .profile import ProfileError
from .rewrite import rewrite_feature_header, rewrite_service_header
from .routing import Plan, Request, StoreError, plan
from .services import (
    DEVICE_TABLE,
    ICSI_FEATURE,
    Family,
    Service,
    families_of_text,
    families_text,
    icsi_urn,
)
from .settings import Settings, load_settings
from .store import ChangeSignal, ProfileStore, connect

# What a device registered it takes (htable `caps`), as families; a handful of distinct texts.
_families = functools.lru_cache(maxsize=64)(families_of_text)
# htable (kamailio.cfg) of the AS markers already honoured, kept longer than a marker lives.
MARKERS = "markers"
CONVERSATION_HEADERS = (
    conversation.CONVERSATION_ID,
    conversation.CONTRIBUTION_ID,
    conversation.IN_REPLY_TO,
)


def _pv(name: str) -> str:
    value = KSR.pv.get(name)
    return "" if value is None else str(value)


def _all_lines(header: str) -> str:
    """The pseudo-variable of every line of `header`, joined by commas (Kamailio's joining)."""
    return f"$(hdr({header})[*])"


def _all(header: str) -> str:
    return _pv(_all_lines(header))


# Shared variable (kamailio.cfg) where the change watcher publishes Redis's change stamp.
PUBLISHED_CHANGES = "$shv(cpmiw_changes)"
CHANGE_WAIT = 1.0  # s: the longest the change watcher blocks on the stream in one call
# What routing reads of every initial request, in Request's field order, then the published change
# stamp. Headers may be absent: each comes with its count, so that an absent one reads "" and not
# Kamailio's "<null>".
_FACTS = (
    "$ru",
    "$rm",
    "Accept-Contact",
    "Contact",
    "P-Preferred-Service",
    "P-Asserted-Service",
    "Content-Type",
    "$ci",
    "$cs",
    "$si",
    "Route",
    PUBLISHED_CHANGES,
)
# ASCII unit separator: no SIP header carries it unescaped. One that does (RFC 3261 lets a
# quoted-pair escape it) shows as a field too many, and the facts are then read one by one.
_SEPARATOR = "\x1f"


def _layout() -> tuple[tuple[str, ...], tuple[tuple[int, int], ...]]:
    """The pseudo-variables read for _FACTS (a header: its count, then every line of it joined by
    commas), and where each fact's value lies among them with its header's count (-1: none)."""
    variables: list[str] = []
    places: list[tuple[int, int]] = []
    for name in _FACTS:
        at = len(variables)
        if name.startswith("$"):
            places.append((at, -1))
            variables.append(name)
        else:
            places.append((at + 1, at))
            variables += [f"$hdrc({name})", _all_lines(name)]
    return tuple(variables), tuple(places)


_FACT_VARIABLES, _PLACES = _layout()
# Every fact in one KSR call: Kamailio evaluates the format ($_s), parsed once per process.
ALL_FACTS = f"$_s({_SEPARATOR.join(_FACT_VARIABLES)})"
# The registered contacts fetched by reg_fetch_contacts(..., "cpmiw"): count, then each one's.
CONTACT_COUNT = "$ulc(cpmiw=>count)"


@functools.cache
def _contact(attribute: str, index: int) -> str:
    return f"$(ulc(cpmiw=>{attribute})[{index}])"


def _contacts(aor: str) -> list[tuple[int, frozenset[Family]]]:
    """Each contact of `aor` in usrloc: its expiry (Unix time, 0: never) and what it takes."""
    if KSR.registrar.reg_fetch_contacts("location", aor, "cpmiw") < 0:
        return []
    try:
        get, tags = KSR.pv.get, KSR.htable.sht_get
        return [
            (
                int(get(_contact("expires", index)) or 0),
                _families(tags(DEVICE_TABLE, get(_contact("addr", index))) or ""),
            )
            for index in range(int(get(CONTACT_COUNT) or 0))
        ]
    finally:
        KSR.registrar.reg_free_contacts("cpmiw")


def _reply(decision: Decision) -> None:
    KSR.sl.send_reply(decision.status, decision.reason)


def _relay() -> None:
    if KSR.tm.t_relay() < 0:
        KSR.sl.sl_reply_error()


def _facts() -> list[str]:
    """The values of _FACTS for the request being routed; absent headers read ""."""
    values = str(KSR.pv.get(ALL_FACTS) or "").split(_SEPARATOR)
    if len(values) != len(_FACT_VARIABLES):  # a separator inside a header: one by one
        values = [_pv(variable) for variable in _FACT_VARIABLES]
    return [values[at] if count < 0 or values[count] != "0" else "" for at, count in _PLACES]


def _request(facts: list[str]) -> Request:
    """The Request routing reads, from _facts() (the published stamp, last, is not part of it)."""
    ruri, method, accept, contact, preferred, asserted, content, call_id, cseq, source, route = (
        facts[:-1]
    )
    return Request(
        ruri=ruri,
        headers=ServiceHeaders(method, accept, contact, preferred, asserted, content),
        call_id=call_id,
        cseq=cseq,
        source=source,
        route=route,
    )


class Router:
    """The handler object app_python3 calls; one per Kamailio process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.profiles: CachedProfiles | None = None
        self.conversations: ConversationStore | None = None
        self.signal: ChangeSignal | None = None  # used by the change watcher's process only
        self.published: str | None = None  # what the change watcher last published
        self.stamp_seen = ""  # the published stamp, as read with the request being routed
        self.watch_failing = False

    def child_init(self, rank: int) -> int:
        # Connections opened before Kamailio forks would be shared by every worker.
        client = connect(self.settings.redis_url, self.settings.redis_timeout)
        self.conversations = ConversationStore(client, self.settings.conversation_ttl)
        store = ProfileStore(client)
        self.signal = store.signal(CHANGE_WAIT)  # opens its connection on first use
        # Routing asks the worker's cache; Redis only on a miss (cache.py).
        self.profiles = CachedProfiles(
            store,
            lambda: self.stamp_seen,
            capacity=self.settings.cache_entries,
            max_age=self.settings.cache_max_age,
            backoff=self.settings.redis_backoff,
        )
        return 0

    def watch_changes(self, _msg: object) -> int:
        """rtimer (kamailio.cfg): publishes Redis's change stamp, then each change as it comes.

        Returns after CHANGE_WAIT without a change, to be called again a millisecond later: the
        stamp is then read afresh, which also catches a data set wiped with no write after it.
        """
        assert self.signal is not None, "child_init opens the store"
        # Not in the Redis metrics, which count the round trips made for requests.
        try:
            stamp = self.signal.stamp()
            if self.watch_failing:
                KSR.info("cpmiw: change watcher reads Redis again\n")
                self.watch_failing = False
            self._publish(str(stamp))
            while self.signal.wait(stamp):
                stamp = self.signal.stamp()
                self._publish(str(stamp))
        except StoreError as error:
            if not self.watch_failing:  # once per outage
                KSR.warn(f"cpmiw: change watcher cannot read Redis: {error}\n")
            self.watch_failing = True
            time.sleep(self.settings.redis_backoff)  # this process has nothing else to do
        except Exception:  # not with a log line every millisecond
            KSR.err(f"cpmiw: change watcher failed: {traceback.format_exc()}\n")
            time.sleep(self.settings.redis_backoff)
        return 1

    def _publish(self, stamp: str) -> None:
        if stamp != self.published:
            KSR.pv.sets(PUBLISHED_CHANGES, stamp)
            self.published = stamp

    def route_initial(self, _msg: object) -> int:
        """Routes one initial request; called by kamailio.cfg for everything but REGISTER."""
        started = time.perf_counter()
        request = None
        try:
            request = self._read_request()
            routing = self._plan(request)
            self._log(request, routing, self._apply(routing, request), started)
        except Exception:
            call_id = request.call_id if request else _pv("$ci")
            KSR.err(f"cpmiw: internal error call-id={call_id}: {traceback.format_exc()}\n")
            KSR.sl.send_reply(500, "Internal Server Error")
            metrics.observe_decision(_pv("$rm"), "unknown", "error", "internal-error", 500, 0.0)
        return 1

    def _read_request(self) -> Request:
        facts = _facts()
        self.stamp_seen = facts[-1]
        return _request(facts)

    def _log(self, request: Request, routing: Plan, decision: Decision, started: float) -> None:
        """The decision's metrics and log line (CPMIW_DECISION_LOG), and the warnings met."""
        for warning in routing.warnings:
            KSR.warn(f"cpmiw: {warning} call-id={request.call_id}\n")
        metrics.observe_decision(
            request.method,
            routing.service.value,
            decision.action.value,
            decision.rule,
            decision.status,
            time.perf_counter() - started,
        )
        if self.settings.decision_log.logs(decision):
            KSR.info(
                f"cpmiw: call-id={request.call_id} method={request.method}"
                f" service={routing.service.value} action={decision.action.value}"
                f" rule={decision.rule} status={decision.status or '-'}"
                f"{' shadow=on' if self.settings.shadow else ''}\n"
            )

    def _plan(self, request: Request, *, use_as: bool = True) -> Plan:
        assert self.profiles is not None, "child_init opens the store"
        routing = plan(
            request,
            self.settings,
            self.profiles.lookup,
            self._registrations,
            time.time(),
            use_as=use_as,
        )
        if routing.marker is None or self._first_use(routing.marker):
            return routing
        # A marker honoured once already: a replay, routed as a new request.
        again = plan(
            replace(request, route=""),
            self.settings,
            self.profiles.lookup,
            self._registrations,
            time.time(),
            use_as=use_as,
        )
        return replace(again, warnings=(f"replayed AS marker from {request.source} ignored",))

    def _first_use(self, token: str) -> bool:
        """Whether a marker is seen for the first time (htable `markers`, shared by workers)."""
        if KSR.htable.sht_get(MARKERS, token) is not None:
            return False
        KSR.htable.sht_seti(MARKERS, token, 1)
        return True

    def _registrations(self, aor: str) -> list[frozenset[Family]]:
        """The recipient's registered devices, with what each registered it can take."""
        summary = KSR.htable.sht_get(devices.SUMMARY_TABLE, devices.usrloc_key(aor))
        if summary is not None:
            try:
                return devices.registered(str(summary), time.time())
            except ValueError:
                KSR.warn(f"cpmiw: registrations of {aor} read from usrloc: bad summary\n")
        return [families for _, families in _contacts(aor)]

    def registered(self, _msg: object) -> int:
        """After a REGISTER was saved: what each contact's device takes, and the AOR's summary."""
        aor = _pv("$tu")
        try:
            for uri, families in registered_contacts(_all("Contact")):
                KSR.htable.sht_sets(DEVICE_TABLE, uri, families_text(families))
            contacts = _contacts(aor)
        except Exception:
            error = traceback.format_exc()
            KSR.err(f"cpmiw: registration tags not kept call-id={_pv('$ci')}: {error}\n")
            contacts = []  # no summary then: routing reads usrloc itself
        key = devices.usrloc_key(aor)
        if contacts:
            KSR.htable.sht_sets(devices.SUMMARY_TABLE, key, devices.summary(contacts))
        else:
            KSR.htable.sht_rm(devices.SUMMARY_TABLE, key)
        return 1

    def _apply(self, routing: Plan, request: Request, *, failing_over: bool = False) -> Decision:
        """Carries the plan out; returns the decision as finally taken (480 if unregistered)."""
        if not failing_over:  # in failure_route these removals were made already
            # Our own route was consumed; routes preloaded by a sender are not honoured.
            if routing.routed:
                KSR.hdr.remove("Route")
            if routing.untrusted and request.headers.asserted_service:
                KSR.hdr.remove("P-Asserted-Service")
        decision = routing.decision
        if self.settings.shadow and routing.identity is not None:
            self._deliver(routing.profile.registration_aor if routing.profile else routing.identity)
            return decision
        if decision.action is Action.REJECT:
            if decision.status == 503:
                KSR.hdr.append_to_reply(f"Retry-After: {self.settings.retry_after}\r\n")
            _reply(decision)
            return decision
        if decision.action is Action.ANSWER:
            self._answer_options(decision)
            return decision
        if decision.target is not None:
            self._to_as(routing, request, decision.target)
            return decision
        if decision.rewrite_to is not None:
            self._rewrite(routing, request, decision.rewrite_to)
        delivered = decision.rewrite_to or routing.service
        if delivered.family is Family.CPM and request.source in self.settings.as_addresses:
            self._restore_conversation(routing)
        return decision if self._deliver(routing.aor) else NOT_REGISTERED

    def _deliver(self, aor: str | None) -> bool:
        """To the registered contacts of `aor` (None: to the R-URI); 480 when it has none."""
        if aor is not None and KSR.registrar.lookup_uri("location", aor) < 0:
            # Gone behind the registrar's back, if its summary said otherwise: usrloc from now on.
            KSR.htable.sht_rm(devices.SUMMARY_TABLE, devices.usrloc_key(aor))
            _reply(NOT_REGISTERED)
            return False
        _relay()
        return True

    def _answer_options(self, decision: Decision) -> None:
        """Answers a capability query with what the network can deliver to the subscriber."""
        urns = ",".join(icsi_urn(service).replace(":", "%3A") for service in decision.capabilities)
        KSR.hdr.append_to_reply(f'Contact: <{_pv("$ru")}>;{ICSI_FEATURE}="{urns}"\r\n')
        KSR.hdr.append_to_reply("Allow: INVITE, ACK, CANCEL, BYE, MESSAGE, OPTIONS\r\n")
        _reply(decision)

    def _party(self, uri: str) -> str:
        """A party of a conversation: its subscriber id if it is ours, else its canonical URI."""
        assert self.profiles is not None
        try:
            identity = canonical(uri)
            profile = self.profiles.lookup(identity)
        except (IdentityError, StoreError, ProfileError):
            return uri
        return profile.subscriber if profile else identity

    def _remember_conversation(self, routing: Plan) -> None:
        """CPM traffic on its way to the IP-SM-GW: keep its conversation for the SMS reply."""
        assert self.conversations is not None
        ids = _pv("$hdr(Conversation-ID)"), _pv("$hdr(Contribution-ID)")
        if routing.profile is None or not all(ids):
            return
        state = Conversation(*ids)
        try:
            self.conversations.remember(self._party(_pv("$fu")), routing.profile.subscriber, state)
        except StoreError as error:
            KSR.warn(f"cpmiw: conversation not kept call-id={_pv('$ci')}: {error}\n")

    def _restore_conversation(self, routing: Plan) -> None:
        """An SMS user's reply from the IP-SM-GW: gives it back its CPM conversation headers."""
        assert self.conversations is not None
        if routing.profile is None:
            return
        present = {name: value for name in CONVERSATION_HEADERS if (value := _pv(f"$hdr({name})"))}
        parties = routing.profile.subscriber, self._party(_pv("$fu"))
        try:
            remembered = self.conversations.recall(*parties)
        except StoreError as error:
            KSR.warn(f"cpmiw: conversation not recalled call-id={_pv('$ci')}: {error}\n")
            remembered = None
        added, state = conversation.headers_to_add(present, remembered)
        for name, value in added:
            KSR.hdr.append(f"{name}: {value}\r\n")
        try:
            self.conversations.remember(*parties, state)
        except StoreError as error:
            KSR.warn(f"cpmiw: conversation not kept call-id={_pv('$ci')}: {error}\n")

    def _rewrite(self, routing: Plan, request: Request, target: Service) -> None:
        """Swaps the feature tag; each header is replaced only when its value changes.

        An untrusted sender's P-Asserted-Service was removed already: it stays removed.
        """
        headers = request.headers
        rewrites = (
            ("Accept-Contact", headers.accept_contact, rewrite_feature_header),
            ("Contact", headers.contact, rewrite_feature_header),
            ("P-Preferred-Service", headers.preferred_service, rewrite_service_header),
            ("P-Asserted-Service", "" if routing.untrusted else headers.asserted_service,
             rewrite_service_header),
        )  # fmt: skip
        for header, old, rewrite in rewrites:
            new = rewrite(old, routing.service, target) if old else old
            if new != old:
                KSR.hdr.remove(header)
                if new:
                    KSR.hdr.append(f"{header}: {new}\r\n")

    def _to_as(self, routing: Plan, request: Request, as_uri: str) -> None:
        """Sends the request to the AS with a signed route back to this proxy (ISC style).

        The Route header is added in branch_route[AS_BRANCH], so that a branch created later by
        the AS's default handling (failure_route[AS_FAILURE] -> as_failed) goes without it.
        """
        if routing.decision.action is Action.TO_IP_SM_GW and routing.service.family is Family.CPM:
            self._remember_conversation(routing)
        bound_to = marker.binding(request.call_id, request.cseq, request.method)
        token = marker.issue(self.settings.secret, bound_to, time.time(), self.settings.marker_ttl)
        own = f"sip:{self.settings.sip_addr}:{self.settings.sip_port};lr;{marker.PARAM}={token}"
        first = as_uri if ";lr" in as_uri.lower() else f"{as_uri};lr"
        handling = routing.profile.as_failure.value if routing.profile else "continue"
        KSR.pv.sets("$avp(cpmiw_route)", f"<{first}>, <{own}>")
        KSR.pv.sets("$avp(cpmiw_as_failure)", handling)
        KSR.setdsturi(as_uri)
        KSR.tm.t_on_branch("AS_BRANCH")
        KSR.tm.t_on_reply("AS_REPLY")
        KSR.tm.t_on_failure("AS_FAILURE")
        KSR.tm.t_set_fr(0, self.settings.as_timeout)
        _relay()

    def as_failed(self, _msg: object) -> int:
        """failure_route[AS_FAILURE]: the AS answered 408 / 5xx, or nothing in time.

        Default handling applies only when the AS sent no provisional response: `continue`
        routes the request as if there were no AS; `terminate` lets tm send the AS's failure
        (408 Request Timeout when it did not answer) to the caller.
        """
        call_id = _pv("$ci")
        try:
            request = self._read_request()
            status = int(_pv("$T_reply_code") or 0)
            if _pv("$avp(cpmiw_as_progress)") or not (status == 408 or 500 <= status < 600):
                return 1
            handling = _pv("$avp(cpmiw_as_failure)") or "continue"
            metrics.count_as_failure(handling)
            KSR.warn(
                f"cpmiw: AS failed with {status}, default handling {handling} call-id={call_id}\n"
            )
            if handling != "continue":
                return 1
            KSR.pv.unset("$avp(cpmiw_route)")
            KSR.resetdsturi()
            started = time.perf_counter()
            routing = self._plan(request, use_as=False)
            self._log(request, routing, self._apply(routing, request, failing_over=True), started)
        except Exception:
            KSR.err(
                f"cpmiw: AS default handling failed call-id={call_id}: {traceback.format_exc()}\n"
            )
        return 1

    def serve_http(self, _msg: object) -> int:
        """Answers an HTTP request on the metrics listener (kamailio.cfg, xhttp)."""
        status, reason, content_type, body = metrics.serve(_pv("$hu"))
        KSR.xhttp.xhttp_reply(status, reason, content_type, body.decode())
        return 1


def mod_init() -> Router:
    """Called once by app_python3 in Kamailio's main process, before it forks the workers."""
    if sys.prefix != "/usr":
        KSR.err(f"cpmiw: embedded Python runs with sys.prefix={sys.prefix}, expected /usr\n")
    settings = load_settings()
    metrics.setup(shadow=settings.shadow)
    return Router(settings)
