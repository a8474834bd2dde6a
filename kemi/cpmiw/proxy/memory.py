"""The shared memory watcher: new requests are refused (503) before Kamailio runs out.

Each stateful request holds a transaction in Kamailio's shared memory until 5 s after its final
answer (~14.5 KB for a MESSAGE), and its answer needs a little more when it comes. Once shared
memory is exhausted tm cannot create a transaction (Kamailio answers 500) nor store an answer
it must relay (the caller gets none). So the proxy stops taking new requests while less than
a reserve of it is free: kamailio.cfg answers them 503 with a Retry-After and counts them, and the
requests already under way keep room for their answers.

Kamailio's `$stat(free_size)` is refreshed once a second per process and read as 32 bits: at
16,000 MESSAGE/s a second is 230 MB of transactions. This watcher, an rtimer process of its own
(kamailio.cfg), asks the allocator itself (RPC `core.shmmem`) and publishes whether memory is
low in `$shv(cpmiw_memory_low)`, which REQINIT reads. It asks again as soon as memory could
have filled down to the reserve at FILL_RATE: every 10 ms near it, once a second when memory is
plentiful. A check costs ~350 µs of CPU (the RPC and its JSON), so it checks no more often than
it must: ten checks a second would be half of what an idle proxy spends (bench/README.md).
"""

from __future__ import annotations

import json
import time
import traceback

import KSR  # provided by app_python3 inside Kamailio

# Kept free for the answers of requests under way and for the requests that come before the
# next check: a sixteenth of shared memory, and at least 16 MB (~1,100 MESSAGE transactions,
# 70 ms at 16,000/s: the watcher may wait for a CPU while the workers are busy).
RESERVE_SHARE = 16
RESERVE_LEAST = 16 * 1024  # KB
# The fastest shared memory can fill, KB/s: 40,000 MESSAGE transactions a second (1.9 times the
# proxy's measured maximum), or 64 KB requests over TCP at 4,000/s.
FILL_RATE = 600 * 1024
SOONEST = 0.01  # s: the shortest time between two checks
TURN = 1.0  # s: how long one call watches before it returns to rtimer: the longest between two
LOW = "$shv(cpmiw_memory_low)"
FREE_PERCENT = "$shv(cpmiw_memory_free_percent)"  # what the memo reads (proxy/memo.py)
_ASK = json.dumps({"jsonrpc": "2.0", "method": "core.shmmem", "params": ["k"], "id": 1})


class MemoryWatcher:
    def __init__(self) -> None:
        self.low = False

    def watch(self) -> None:
        """Checks shared memory for TURN seconds, each time as late as it safely can; then
        rtimer calls again 1 ms later (kamailio.cfg)."""
        end = time.monotonic() + TURN
        while (now := time.monotonic()) < end:
            try:
                headroom = self._check()
            except Exception:  # not with a log line every 10 ms
                KSR.err(f"cpmiw: shared memory not read: {traceback.format_exc()}\n")
                time.sleep(TURN)
                return
            time.sleep(min(max(headroom / FILL_RATE, SOONEST), end - now))

    def _check(self) -> int:
        """Publishes whether shared memory is low, logs each change; the KB above the reserve."""
        KSR.jsonrpcs.exec(_ASK)
        memory = json.loads(KSR.jsonrpcs.response())["result"]
        free, total = int(memory["free"]), int(memory["total"])
        reserve = max(total // RESERVE_SHARE, RESERVE_LEAST)
        KSR.pv.seti(FREE_PERCENT, free * 100 // max(total, 1))
        low = free < reserve
        if low != self.low:
            self._publish(low, free, total)
        return free - reserve

    def _publish(self, low: bool, free: int, total: int) -> None:
        self.low = low
        KSR.pv.seti(LOW, int(low))
        if low:
            KSR.warn(
                f"cpmiw: shared memory low ({free // 1024} of {total // 1024} MB free):"
                " new requests answered 503 (CPMIW_SHM_MB)\n"
            )
        else:
            KSR.info(f"cpmiw: shared memory available again ({free // 1024} MB free)\n")
