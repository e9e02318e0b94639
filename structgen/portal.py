"""The portal: one long-lived event loop in a daemon thread, for sync callers and for the
pooled clients that must stay on one loop (httpx). :func:`run_sync` runs a coroutine there
from sync code (the ``Engine.run``/``generate`` twins, ``Backend.generate``);
:func:`on_portal` awaits one there from any other loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

_T = TypeVar("_T")

_loop: asyncio.AbstractEventLoop | None = None
_lock = threading.Lock()


def portal() -> asyncio.AbstractEventLoop:
    """One long-lived event loop in a daemon thread for all sync calls.

    Sync wrappers submit here instead of calling ``asyncio.run`` each time, so pooled
    clients (httpx) and the embedded scheduler stay bound to one loop across calls.
    """
    global _loop
    with _lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="structgen-loop",
                             daemon=True).start()
            _loop = loop
        return _loop


def run_sync(coro: Any) -> Any:
    """Run a coroutine to completion from sync code (also from inside a running loop)."""
    return asyncio.run_coroutine_threadsafe(coro, portal()).result()


async def on_portal(coro: Coroutine[Any, Any, _T]) -> _T:
    """Await ``coro`` on the portal loop (:func:`run_sync`'s).

    An httpx pool belongs to the loop it was opened in. Running every call of every
    :class:`HTTPClient` on the one long-lived portal loop keeps one pool per backend for
    the life of the process, whichever loops the callers use (each ``asyncio.run`` makes
    a new one); a pool per caller loop would leave the old pools' sockets open.
    Cancelling the caller cancels the call on the portal.
    """
    loop = portal()
    if asyncio.get_running_loop() is loop:
        return await coro
    return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))
