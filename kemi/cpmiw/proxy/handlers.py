"""The object app_python3 calls: one method per `python_exec()` name in kamailio.cfg.

Every request leaves here answered or relayed: each handler catches what its concern raises.
"""

from __future__ import annotations

import os
import sys

import KSR  # provided by app_python3 inside Kamailio

from .. import metrics
from ..settings import Settings, load_settings
from ..store.cache import CachedProfiles
from ..store.conversations import ConversationStore
from ..store.credentials import CredentialReader
from ..store.guard import Guard
from ..store.markers import HonouredMarkers
from ..store.profiles import ProfileStore
from ..store.redis import Connections, connect, parse_url
from . import fallback, http, memo, published, registrations, trusted
from .changes import CHANGE_WAIT, ChangeWatcher
from .conversations import Conversations
from .delivery import Deliverer
from .fallback import Fallback
from .fork import Branches
from .handoff import HandOff
from .initial import InitialRouting
from .memo import Memo
from .memory import MemoryWatcher
from .registrations import RegisteredDevices


class Handlers:
    """One per Kamailio process; its parts are made in `child_init`, after the fork."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._initial: InitialRouting | None = None
        self._handoff: HandOff | None = None
        self._watcher: ChangeWatcher | None = None
        self._admission: registrations.Admission | None = None
        self._memory = MemoryWatcher()  # used by the memory watcher's process only
        self._guard: Guard | None = None
        self._branches = Branches(settings)
        self._fallback: Fallback | None = None

    def child_init(self, rank: int) -> int:
        # Connections opened before Kamailio forks would be shared by every worker.
        settings = self.settings
        client = connect(settings.redis_url, settings.redis_timeout)
        store = ProfileStore(client)
        # Every Redis call for a request: one time budget, a breaker per shard (store/guard.py).
        self._guard = Guard(
            Connections(client),
            timeout=settings.redis_timeout,
            slow=settings.redis_slow,
            backoff=settings.redis_backoff,
        )
        if rank > 0:  # a SIP worker: its first request should not pay for the connection
            self._guard.warm()
        # Routing asks the worker's cache; Redis only on a miss (store/cache.py). The change
        # stamp it compares is the one read with the request (facts.py).
        profiles = CachedProfiles(
            store,
            self._guard,
            lambda: self._initial.stamp_seen if self._initial else "",
            capacity=settings.cache_entries,
            max_age=settings.cache_max_age,
        )
        conversations = Conversations(
            ConversationStore(self._guard, settings.conversation_ttl), profiles
        )
        deliverer = Deliverer(settings, conversations)
        honoured = HonouredMarkers(self._guard.execute, settings.marker_ttl)
        self._handoff = HandOff(settings, deliverer, conversations, honoured)
        registered = RegisteredDevices()
        memo = Memo(
            settings.memo_ttl, settings.rules.as_addresses, registered, settings.fallback_timeout
        )
        self._initial = InitialRouting(
            settings, profiles, registered, deliverer, self._handoff, memo
        )
        self._fallback = Fallback(settings, self._handoff, conversations)
        # REGISTERs read credentials within the same time budget and breaker as look-ups.
        self._admission = registrations.Admission(settings, CredentialReader(self._guard))
        # Used by the change watcher's process only; opens its connection on first use.
        self._watcher = ChangeWatcher(store.signal(CHANGE_WAIT), settings.redis_backoff)
        return 0

    def route_initial(self, _msg: object) -> int:
        """request_route: every initial request but REGISTER."""
        assert self._initial is not None and self._guard is not None, "child_init made them"
        with self._guard.request():
            self._initial.route()
        return 1

    def admit_register(self, _msg: object) -> int:
        """request_route: may this REGISTER bind? 1: kamailio.cfg saves it; -1: answered."""
        assert self._admission is not None and self._guard is not None, "child_init made them"
        with self._guard.request():
            return 1 if self._admission.admit() else -1

    def registered(self, _msg: object) -> int:
        """request_route, after a REGISTER was saved and before its 200 is sent."""
        registrations.registered()
        return 1

    def as_failed(self, _msg: object) -> int:
        """failure_route[AS_FAILURE]: the AS's default handling."""
        assert self._handoff is not None and self._guard is not None, "child_init made them"
        with self._guard.request():
            self._handoff.failed()
        return 1

    def device_branch(self, _msg: object) -> int:
        """branch_route[DEVICE_BRANCH]: a branch of a fork to the subscriber's devices."""
        self._branches.branch()
        return 1

    def device_replied(self, _msg: object) -> int:
        """onreply_route[DEVICE_REPLY]: a device's final answer of 300 or more."""
        fallback.replied()
        return 1

    def devices_failed(self, _msg: object) -> int:
        """failure_route[DEVICE_FAILURE]: a serial fork's next stage, or SMS fallback."""
        assert self._fallback is not None and self._guard is not None, "child_init made them"
        with self._guard.request():
            self._fallback.failed()
        return 1

    def watch_changes(self, _msg: object) -> int:
        """route[WATCH_CHANGES], called by rtimer: the change watcher."""
        assert self._watcher is not None, "child_init made it"
        self._watcher.watch()
        return 1

    def watch_memory(self, _msg: object) -> int:
        """route[WATCH_MEMORY], called by rtimer every 10 ms: the shared memory watcher."""
        self._memory.watch()
        return 1

    def serve_http(self, _msg: object) -> int:
        """event_route[xhttp:request]: the metrics listener."""
        http.serve()
        return 1


def mod_init() -> Handlers:
    """Called once by app_python3 in Kamailio's main process, before it forks the workers."""
    if sys.prefix != "/usr":
        KSR.err(f"cpmiw: embedded Python runs with sys.prefix={sys.prefix}, expected /usr\n")
    settings = load_settings()
    parse_url(settings.redis_url)  # a URL naming no topology stops Kamailio here, with why
    metrics.setup(shadow=settings.shadow)
    trusted.publish(settings)
    memo.publish(settings)
    published.publish(os.environ)
    return Handlers(settings)
