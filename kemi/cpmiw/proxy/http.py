"""The metrics listener (kamailio.cfg, xhttp): HTTP requests answered with the metrics."""

from __future__ import annotations

import KSR  # provided by app_python3 inside Kamailio

from .. import metrics
from .ksr import pv


def serve() -> None:
    """Answers an HTTP request on the metrics listener."""
    status, reason, content_type, body = metrics.serve(pv("$hu"))
    KSR.xhttp.xhttp_reply(status, reason, content_type, body.decode())
