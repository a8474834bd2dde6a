"""The metrics listener (kamailio.cfg, xhttp): HTTP requests answered with the metrics."""

from __future__ import annotations

import KSR  # provided by app_python3 inside Kamailio

from .. import metrics
from .ksr import pv
from .memo import tallies

# What kamailio.cfg refuses before any routing, counted in Kamailio statistics (statistics
# module: shared by every process, no Python on that path), by reason.
REFUSED = {
    "too-large": "cpmiw_refused_too_large",
    "shared-memory-full": "cpmiw_refused_shared_memory_full",
    "metrics-listener": "cpmiw_refused_metrics_listener",
}


def serve() -> None:
    """Answers an HTTP request on the metrics listener: GET /metrics, and nothing else.

    Scraping is read-only: any other method is 405 (Allow: GET), whatever the path.
    """
    if pv("$rm") != "GET":
        KSR.hdr.append_to_reply("Allow: GET\r\n")
        KSR.xhttp.xhttp_reply(405, "Method Not Allowed", "text/plain", "GET /metrics only\n")
        return
    status, reason, content_type, body = metrics.serve(pv("$hu"), tallies())
    text = body.decode() + (kamailio_counters() if status == 200 else "")
    KSR.xhttp.xhttp_reply(status, reason, content_type, text)


def kamailio_counters() -> str:
    """The exposition of the counters kamailio.cfg keeps (Kamailio reads them as 32 bits)."""
    lines = [
        "# HELP cpmiw_flood_blocked_total Requests dropped because their source was flooding.",
        "# TYPE cpmiw_flood_blocked_total counter",
        f"cpmiw_flood_blocked_total {pv('$stat(cpmiw_flood_blocked)') or 0}",
        "# HELP cpmiw_refused_total Requests kamailio.cfg answered with an error before routing"
        " them, by reason.",
        "# TYPE cpmiw_refused_total counter",
    ]
    lines += [
        f'cpmiw_refused_total{{reason="{reason}"}} {pv(f"$stat({name})") or 0}'
        for reason, name in REFUSED.items()
    ]
    return "\n".join(lines) + "\n"
