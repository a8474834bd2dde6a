"""The change watcher: one process (rtimer, kamailio.cfg) tells every worker what changed.

It blocks on Redis's change stream and publishes the stream's stamp in shared memory; each
worker compares the stamp with what its cache last synchronised to (store/cache.py).
"""

from __future__ import annotations

import time
import traceback

import KSR  # provided by app_python3 inside Kamailio

from ..store.changes import ChangeSignal
from ..store.redis import StoreError
from .facts import PUBLISHED_CHANGES

CHANGE_WAIT = 1.0  # s: the longest the change watcher blocks on the stream in one call


class ChangeWatcher:
    def __init__(self, signal: ChangeSignal, backoff: float) -> None:
        self._signal = signal
        self._backoff = backoff
        self._published: str | None = None  # what was last published
        self._failing = False

    def watch(self) -> None:
        """Publishes Redis's change stamp, then each change as it comes.

        Returns after CHANGE_WAIT without a change, to be called again a millisecond later: the
        stamp is then read afresh, which also catches a data set wiped with no write after it.
        Not in the Redis metrics, which count the round trips made for requests.
        """
        try:
            stamp = self._signal.stamp()
            if self._failing:
                KSR.info("cpmiw: change watcher reads Redis again\n")
                self._failing = False
            self._publish(str(stamp))
            while self._signal.wait(stamp):
                stamp = self._signal.stamp()
                self._publish(str(stamp))
        except StoreError as error:
            if not self._failing:  # once per outage
                KSR.warn(f"cpmiw: change watcher cannot read Redis: {error}\n")
            self._failing = True
            time.sleep(self._backoff)  # this process has nothing else to do
        except Exception:  # not with a log line every millisecond
            KSR.err(f"cpmiw: change watcher failed: {traceback.format_exc()}\n")
            time.sleep(self._backoff)

    def _publish(self, stamp: str) -> None:
        if stamp != self._published:
            KSR.pv.sets(PUBLISHED_CHANGES, stamp)
            self._published = stamp
