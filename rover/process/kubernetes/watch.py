"""A local copy of one watched Kubernetes collection, kept current by list + watch.

The loop is client-go's reflector in small: list (the store is replaced wholesale), then watch
from the list's resourceVersion. A stream the server closes normally (its timeout) is simply
re-watched from the last version seen; a stream that breaks, or that the server expires
(410 Gone: the version was compacted away), leads to a fresh list after a backoff. Nothing here
ever raises into the agent: failures are logged and retried until :meth:`Reflector.stop`.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

from kubernetes import watch
from kubernetes.client.exceptions import ApiException

log = logging.getLogger(__name__)

T = TypeVar("T")

_CONNECT_TIMEOUT_S = 10.0
_HTTP_GONE = 410


class Backoff:
    """Exponential delays with jitter, from ``initial_s`` up to ``max_s``."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self._next = initial_s

    def next(self) -> float:
        delay = self._next
        self._next = min(self._next * 2, self.max_s)
        return delay * random.uniform(0.8, 1.2)

    def reset(self) -> None:
        self._next = self.initial_s


class Reflector(Generic[T]):
    """Runs in a daemon thread between :meth:`start` and :meth:`stop`.

    ``list_call`` is a ``CoreV1Api`` list method with its selectors bound (``functools.partial``);
    ``convert`` turns an API object into what the store keeps, ``key`` names it.
    """

    def __init__(
        self,
        name: str,
        list_call: Callable[..., Any],
        convert: Callable[[Any], T],
        key: Callable[[T], Hashable],
        *,
        watch_timeout_s: int = 300,
        request_timeout_s: float = 30.0,
        retry_initial_s: float = 0.5,
        retry_max_s: float = 30.0,
    ) -> None:
        self.name = name
        self._list_call = list_call
        self._convert = convert
        self._key = key
        self._watch_timeout_s = watch_timeout_s
        self._request_timeout_s = request_timeout_s
        self._backoff = Backoff(retry_initial_s, retry_max_s)
        self._items: dict[Hashable, T] = {}
        self._version = 0  # bumped on every change, so readers can cache derived data
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._watch: watch.Watch | None = None
        self._thread: threading.Thread | None = None
        self.synced = threading.Event()  # set once the first list has landed
        self.lists = 0  # how many times the collection was (re)listed
        self.failures = 0
        self._failing = False

    # --- reading ---------------------------------------------------------------------------

    def snapshot(self) -> tuple[int, list[T]]:
        with self._lock:
            return self._version, list(self._items.values())

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"k8s-{self.name}", daemon=True)
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to end without waiting (to stop several reflectors at once)."""
        self._stopping.set()
        current = self._watch
        if current is not None:
            current.stop()  # unblocks the stream's read

    def stop(self, timeout_s: float = 5.0) -> None:
        self.request_stop()
        if self._thread is None:
            return
        deadline = time.monotonic() + timeout_s
        while self._thread.is_alive() and time.monotonic() < deadline:
            self.request_stop()  # again, in case a stream was just being opened
            self._thread.join(0.1)
        if self._thread.is_alive():
            log.warning("%s: watch thread did not stop within %.1fs", self.name, timeout_s)

    # --- the loop --------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                version = self._list()
                while not self._stopping.is_set():
                    started = time.monotonic()
                    version, events = self._watch_from(version)
                    if not events and time.monotonic() - started < 1.0:
                        # a server or proxy closing streams at once must not make us spin
                        self._stopping.wait(self._backoff.next())
                return
            except ApiException as exc:
                if exc.status == _HTTP_GONE:
                    log.info("%s: watch expired (410 Gone); listing again", self.name)
                else:
                    self._failed(f"the API server answered {exc.status} {exc.reason}")
            except Exception as exc:  # connection refused/reset, timeouts, malformed objects
                if self._stopping.is_set():
                    return
                self._failed(f"{type(exc).__name__}: {exc}")
            delay = self._backoff.next()
            log.debug("%s: listing again in %.1fs", self.name, delay)
            self._stopping.wait(delay)

    def _failed(self, reason: str) -> None:
        """The first failure in a row is a warning; the retries after it are not news."""
        self.failures += 1
        level = logging.WARNING if not self._failing else logging.DEBUG
        log.log(level, "%s: list/watch failed (%s); retrying with backoff", self.name, reason)
        self._failing = True

    def _list(self) -> str:
        result = self._list_call(_request_timeout=(_CONNECT_TIMEOUT_S, self._request_timeout_s))
        items = {}
        for obj in result.items or []:
            item = self._convert(obj)
            items[self._key(item)] = item
        with self._lock:
            self._items = items
            self._version += 1
        self.lists += 1
        self.synced.set()
        if self._failing:
            log.info("%s: listed again after %d failed attempt(s)", self.name, self.failures)
            self._failing = False
        log.debug("%s: listed %d objects", self.name, len(items))
        return result.metadata.resource_version or ""

    def _watch_from(self, version: str) -> tuple[str, int]:
        """Apply events until the server ends the stream; return the last version seen and
        how many events arrived."""
        events = 0
        self._watch = watch.Watch()
        try:
            stream = self._watch.stream(
                self._list_call,
                resource_version=version,
                timeout_seconds=self._watch_timeout_s,
                allow_watch_bookmarks=True,
                _request_timeout=(_CONNECT_TIMEOUT_S, self._watch_timeout_s + 30),
            )
            for event in stream:
                if self._stopping.is_set():
                    break
                version = self._apply(event) or version
                events += 1
                self._backoff.reset()  # the connection works again
        finally:
            self._watch = None
        return version, events

    def _apply(self, event: dict[str, Any]) -> str:
        kind = event["type"]
        if kind == "BOOKMARK":
            return event["raw_object"].get("metadata", {}).get("resourceVersion", "")
        item = self._convert(event["object"])
        with self._lock:
            if kind == "DELETED":
                self._items.pop(self._key(item), None)
            else:  # ADDED, MODIFIED
                self._items[self._key(item)] = item
            self._version += 1
        return event["object"].metadata.resource_version or ""
