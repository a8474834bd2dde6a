"""The metrics listener (kamailio.cfg, xhttp): HTTP requests answered with the metrics."""

from __future__ import annotations

import KSR  # provided by app_python3 inside Kamailio

from .. import metrics
from .ksr import pv
from .memo import tallies


def serve() -> None:
    """Answers an HTTP request on the metrics listener: GET /metrics, and nothing else.

    Scraping is read-only: any other method is 405 (Allow: GET), whatever the path.
    """
    if pv("$rm") != "GET":
        KSR.hdr.append_to_reply("Allow: GET\r\n")
        KSR.xhttp.xhttp_reply(405, "Method Not Allowed", "text/plain", "GET /metrics only\n")
        return
    status, reason, content_type, body = metrics.serve(pv("$hu"), tallies())
    KSR.xhttp.xhttp_reply(status, reason, content_type, body.decode())
