"""A slow Redis for tests and benchmarks: a TCP relay on loopback that holds every reply.

Redis itself cannot be made to answer each command late (DEBUG SLEEP blocks it whole); a relay
in front of it can: each chunk Redis sends is passed on `delay` seconds after it came, in order,
while requests pass at once. Set `delay` at any time; 0 relays without holding.

In a process of its own (`python -m cpmiw.testing.slowredis UPSTREAM_PORT DELAY_MS`), so that
the relay does not share a benchmark's interpreter: it prints its port, holds replies while it
has received SIGUSR1 more recently than SIGUSR2 (printing "held" or "released" once it does what
a signal says), and stops at SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import threading
import time


class DelayProxy:
    """The relay, served by a thread of its own; `port` is where clients connect."""

    def __init__(self, upstream: int, host: str = "127.0.0.1") -> None:
        self.delay = 0.0
        self._upstream = (host, upstream)
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        self._started.wait()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", 0)
        )
        self.port: int = self._server.sockets[0].getsockname()[1]
        self._started.set()
        self._loop.run_forever()

    async def _accept(self, client: asyncio.StreamReader, to_client: asyncio.StreamWriter) -> None:
        try:
            server, to_server = await asyncio.open_connection(*self._upstream)
        except OSError:  # Redis is down: so is this connection
            to_client.close()
            return
        self._writers |= {to_client, to_server}
        await asyncio.gather(self._pump(client, to_server, 0), self._pump(server, to_client, 1))
        self._writers -= {to_client, to_server}

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, held: int
    ) -> None:
        """Passes what `source` sends on to `sink`; `held`: after `delay` (1) or at once (0)."""
        due: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while (item := await due.get())[1]:
                wait = item[0] - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                sink.write(item[1])

        sending = asyncio.ensure_future(deliver())
        with contextlib.suppress(OSError):
            while data := await source.read(65536):
                await due.put((time.monotonic() + held * self.delay, data))
        await due.put((0.0, b""))
        await sending
        sink.close()

    def close(self) -> None:
        """Stops relaying and closes every connection."""
        asyncio.run_coroutine_threadsafe(self._shut(), self._loop).result(timeout=5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    async def _shut(self) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)


def main(argv: list[str]) -> None:
    upstream, delay_ms = int(argv[0]), int(argv[1])
    proxy = DelayProxy(upstream)

    def hold(on: bool) -> None:
        proxy.delay = delay_ms / 1000 if on else 0.0
        print("held" if on else "released", flush=True)  # a signal's sender may wait for it

    signal.signal(signal.SIGUSR1, lambda *_: hold(True))
    signal.signal(signal.SIGUSR2, lambda *_: hold(False))
    stopped = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopped.set())
    print(proxy.port, flush=True)
    stopped.wait()
    proxy.close()


if __name__ == "__main__":
    main(sys.argv[1:])
