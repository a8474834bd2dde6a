"""KEMI script for `bench/run costs`: the product's route stopped after a given stage.

Kamailio loads it in place of kemi/cpmiw_kamailio.py (CPMIW_KEMI_SCRIPT); BENCH_STAGE picks
how much of the plugin's route runs before the request is relayed to its registered device:

    relay    nothing: registrar lookup() and t_relay() from Python
    read     the request's facts read as the plugin reads them, then as relay
    product  the plugin as shipped
"""

import os
import sys

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kemi")
)

import cpmiw_kamailio  # noqa: F401  (puts the plugin's venv on the path)
import KSR  # provided by app_python3 inside Kamailio

from cpmiw.proxy import facts, handlers

STAGE = os.environ.get("BENCH_STAGE", "product")


class StoppedRouter(handlers.Handlers):
    def route_initial(self, msg: object) -> int:
        if STAGE == "product":
            return super().route_initial(msg)
        if STAGE == "read":
            facts.read_request()  # the plugin's own reading of the request
        if KSR.registrar.lookup("location") < 0:
            KSR.sl.send_reply(480, "Temporarily Unavailable")
        elif KSR.tm.t_relay() < 0:
            KSR.sl.sl_reply_error()
        return 1


def mod_init() -> StoppedRouter:
    return StoppedRouter(handlers.mod_init().settings)
