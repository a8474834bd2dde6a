"""A client for the running Kamailio's JSON-RPC control socket (jsonrpcs, Unix datagrams).

The registrations the proxy routes by live in Kamailio's memory (usrloc, and the htable of what
each registered device can take), not in Redis. `cpmiw explain` reads them here, the way kamcli
talks to Kamailio: one JSON-RPC request per datagram to the socket kamailio.cfg opens
(CPMIW_RPC_SOCKET), answered to a socket of our own in a private temporary directory.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import socket
import tempfile
from types import TracebackType
from typing import Self

from ..core.devices import Device, usrloc_key
from ..core.services import DEVICE_TABLE
from ..settings import PUBLISHED_VARIABLE

_MAX_DATAGRAM = 1 << 20
# Kamailio 5.6 answers "not found" with code 500: only the messages tell it from a failure.
_NO_AOR = "AOR not found"
_NO_KEY = "doesn't exist"


class RpcError(RuntimeError):
    """Kamailio could not be asked (no socket, no answer) or answered with an error."""


class KamailioRpc:
    """JSON-RPC over Kamailio's Unix datagram socket; use as a context manager."""

    def __init__(self, path: str, timeout: float = 2.0) -> None:
        self.path = path
        self._dir = tempfile.mkdtemp(prefix="cpmiw-rpc-")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(os.path.join(self._dir, "reply.sock"))
        self._sock.settimeout(timeout)
        self._ids = itertools.count(1)

    def close(self) -> None:
        self._sock.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _value: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

    def call(self, method: str, *params: str) -> object:
        """The `result` of one call; raises RpcError for a transport failure or an error reply."""
        request_id = next(self._ids)
        request = {"jsonrpc": "2.0", "method": method, "params": list(params), "id": request_id}
        try:
            self._sock.sendto(json.dumps(request).encode(), self.path)
            reply = json.loads(self._sock.recv(_MAX_DATAGRAM))
        except (OSError, ValueError) as error:
            raise RpcError(f"kamailio rpc {self.path}: {error}") from None
        if "error" in reply:
            failure = reply["error"]
            raise RpcError(f"{method}: {failure.get('message', failure)}")
        return reply.get("result")

    def published_settings(self) -> dict[str, str]:
        """The CPMIW_* environment the running plugin published at start (secrets left out)."""
        found = self.call("pv.shvGet", PUBLISHED_VARIABLE)
        value = found.get("value") if isinstance(found, dict) else None
        try:
            published = json.loads(value) if isinstance(value, str) else None
        except ValueError:
            published = None
        if not isinstance(published, dict):
            raise RpcError(f"pv.shvGet {PUBLISHED_VARIABLE}: no settings published ({value!r})")
        return {str(name): str(setting) for name, setting in published.items()}

    def contacts(self, aor: str) -> list[Device]:
        """The contacts registered for `aor` (none: an empty list), with the feature parameters
        their devices registered."""
        try:
            found = self.call("ul.lookup", "location", usrloc_key(aor))
        except RpcError as error:
            if _NO_AOR in str(error):
                return []
            raise
        entries = found.get("Contacts", []) if isinstance(found, dict) else []
        contacts = [entry["Contact"] for entry in entries if "Contact" in entry]
        return [
            Device(c["Address"], round(float(c.get("Q", 1)) * 1000), self._features(c["Address"]))
            for c in contacts
        ]

    def _features(self, uri: str) -> str:
        try:
            item = self.call("htable.get", DEVICE_TABLE, uri)
        except RpcError as error:
            if _NO_KEY in str(error):  # the plugin kept nothing for it
                return ""
            raise
        value = item.get("item", {}).get("value", "") if isinstance(item, dict) else ""
        return str(value)
