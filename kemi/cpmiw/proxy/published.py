"""The settings the proxy runs with, published where the control socket can read them.

`cpmiw explain` must decide with the running proxy's settings, not with a file that may have been
edited since the start. app_python3 offers no RPC of a script's own, so at start the plugin puts
its CPMIW_* environment, secrets left out, in a shared variable (pv's `$shv`): jsonrpcs answers
`pv.shvGet cpmiw_settings` from it, for `cpmiw explain` as for kamcli.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import KSR  # provided by app_python3 inside Kamailio

from ..settings import PUBLISHED_VARIABLE, public_environment


def publish(env: Mapping[str, str]) -> None:
    """Called once in Kamailio's main process (shared memory: every process reads the same)."""
    text = json.dumps(public_environment(env), sort_keys=True, separators=(",", ":"))
    KSR.pv.sets(f"$shv({PUBLISHED_VARIABLE})", text)
