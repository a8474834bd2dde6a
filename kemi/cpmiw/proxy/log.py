"""A decision's metrics and log line (CPMIW_DECISION_LOG), and the warnings met on the way."""

from __future__ import annotations

import time

import KSR  # provided by app_python3 inside Kamailio

from .. import metrics
from ..core.decision import Decision
from ..core.routing import Request
from ..core.services import Service
from ..settings import Settings


def record(
    settings: Settings,
    request: Request,
    service: Service,
    decision: Decision,
    warnings: tuple[str, ...],
    started: float,
) -> None:
    for warning in warnings:
        KSR.warn(f"cpmiw: {warning} call-id={request.call_id}\n")
    metrics.observe_decision(
        request.method,
        service.value,
        decision.action.value,
        decision.rule,
        decision.status,
        time.perf_counter() - started,
    )
    if settings.decision_log.logs(decision):
        KSR.info(
            f"cpmiw: call-id={request.call_id} method={request.method}"
            f" service={service.value} {decision.log_fields}"
            f"{' shadow=on' if settings.shadow else ''}\n"
        )
