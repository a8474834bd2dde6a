"""The metrics listener (kamailio.cfg, xhttp): HTTP requests answered with the metrics.

Kamailio's own numbers come from its RPC commands, asked over its JSON-RPC control socket (the
one kamcli uses): stats.fetch (every statistic: tm, sl, usrloc, shared memory, the counters
kamailio.cfg keeps), pkg.stats (each process's private memory), corex.list_sockets (which UDP
listeners to look up in /proc/net/udp) and core.version. About 1 ms a scrape.

Why the socket and not KSR.jsonrpcs.exec in this process: tmx and sl keep their sums over the
processes in a cache of each process, refreshed every second or two; asked in whichever TCP
worker answers the scrape, a counter went back from one scrape to the next (measured: sl's 2xx
read 1, 2, 1, 2 from the two workers). The socket is answered by one process, the RPC process,
so successive scrapes read one cache: late by up to two seconds, never going back.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
from pathlib import Path
from typing import Any

import KSR  # provided by app_python3 inside Kamailio

from .. import metrics
from .ksr import pv
from .memo import tallies

UDP_TABLE = Path("/proc/net/udp")


def serve() -> None:
    """Answers an HTTP request on the metrics listener: GET /metrics, and nothing else.

    Scraping is read-only: any other method is 405 (Allow: GET), whatever the path.
    """
    if pv("$rm") != "GET":
        KSR.hdr.append_to_reply("Allow: GET\r\n")
        KSR.xhttp.xhttp_reply(405, "Method Not Allowed", "text/plain", "GET /metrics only\n")
        return
    path = pv("$hu")
    kamailio = kamailio_state() if path.split("?", 1)[0] == "/metrics" else None
    status, reason, content_type, body = metrics.serve(path, tallies(), kamailio)
    KSR.xhttp.xhttp_reply(status, reason, content_type, body.decode())


_MAX_DATAGRAM = 1 << 20
# The RPC process answers in about 1 ms; this TCP worker also carries SIP over TCP, so a Kamailio
# that does not answer costs a scrape this once, not per command.
_TIMEOUT = 0.5


class _Control:
    """This process's client of the control socket: one datagram socket, bound in the abstract
    namespace (no file to clean up), kept for the process's life."""

    def __init__(self) -> None:
        self.path = pv("$def(RPC_SOCKET)").strip('"')  # kamailio.cfg's, from CPMIW_RPC_SOCKET
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(f"\0cpmiw-metrics-{os.getpid()}")
        self.sock.settimeout(_TIMEOUT)
        self.calls = itertools.count()

    def call(self, method: str, *params: str) -> Any:
        """The result of one command (None for an error answer); OSError or ValueError when
        Kamailio did not answer in time, or not in JSON."""
        request_id = f"{method}-{next(self.calls)}"
        request = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": request_id}
        self.sock.sendto(json.dumps(request).encode(), self.path)
        while True:  # skip a late answer to a call that timed out before
            reply = json.loads(self.sock.recv(_MAX_DATAGRAM))
            if isinstance(reply, dict) and reply.get("id") == request_id:
                return reply.get("result")


_control: _Control | None = None


def _ask_kamailio() -> tuple[Any, Any, Any, Any]:
    """stats.fetch, pkg.stats, corex.list_sockets and core.version; all None when Kamailio
    could not be asked (logged once a scrape): the scrape is answered with what the plugin has."""
    global _control  # noqa: PLW0603  (one client per process, made on its first scrape)
    try:
        if _control is None:
            _control = _Control()
        control = _control
        return (
            control.call("stats.fetch", "all"),
            control.call("pkg.stats"),
            control.call("corex.list_sockets"),
            control.call("core.version"),
        )
    except (OSError, ValueError) as error:
        KSR.err(f"cpmiw: metrics: Kamailio's control socket did not answer: {error}\n")
        return None, None, None, None


def kamailio_state() -> metrics.Kamailio:
    """What Kamailio says about itself now (a part it cannot say is left out)."""
    stats, processes, sockets, version = _ask_kamailio()
    listeners = [
        (str(s.get("NAME")), int(s.get("PORT", 0)))
        for s in sockets or ()
        if isinstance(s, dict) and s.get("PROTO") == "udp" and str(s.get("PORT")).isdigit()
    ]
    try:
        drops = metrics.udp_drops(UDP_TABLE.read_text(), listeners)
    except OSError:  # no procfs (a container without it): the series is left out
        drops = {}
    return metrics.Kamailio(
        stats if isinstance(stats, dict) else {},
        processes if isinstance(processes, list) else [],
        drops,
        version if isinstance(version, str) else "",
    )
