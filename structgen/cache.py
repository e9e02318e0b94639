"""Result cache: validated answers keyed by everything that changes the answer.

The key is the SHA-256 of a canonical encoding of the messages, the compiled schema's
canonical hash, the model id, the backend-independent sampling parameters, the output kind,
the reasoning flag and :data:`CACHE_FORMAT_VERSION`. Dict order and whitespace of a schema
do not change it (the schema hash is canonical).

Entries are text, never pickles (a cache directory or a shared Redis must not be a
code-execution vector)::

    <HMAC-SHA256 of body, 64 hex chars><body: one JSON object>

The MAC is keyed (``[cache] secret``, or else the ``.secret`` of the cache directory, made
on first use; see :mod:`structgen.signing`): it catches truncated or corrupted entries and
forged ones alike (whoever can write the store cannot sign without the secret); such an
entry is dropped and the request recomputed. Workers sharing a Redis must share
``[cache] secret``, or each one's entries are misses for the others. An entry keeps the validated text the model produced, not a dump of
the value: on a hit that text is validated again against the requested output, exactly as
on the miss, so a hit equals (``==``) what the miss returned (aliases, serializers,
``SecretStr``, enums, datetimes, discriminated unions) and a bad entry or a changed model
class never yields an invalid object.

Routed requests (no ``backend=``) share one key per chain (the engine passes the models
of the router's chain, as plain values: the cache knows nothing of routing); the entry records
which backends the router passed over (failed, circuit open, health probe failed) before
the one that answered. Such an entry is served only while every one of them is still known
to be down, so a fallback's answer is not served once the preferred backend is back.

Stores: ``diskcache`` in ``[cache] dir`` (default ``~/.cache/structgen/results``, safe with
several processes) or Redis (``[cache] backend = "redis"``, ``url``) for a fleet of workers.
A store that fails is skipped for a while (backing off from 1 s to a minute) rather than
asked again on every request; Redis operations time out after :data:`REDIS_TIMEOUT_S`.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import hmac
import json
import logging
import math
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import diskcache
from pydantic import ValidationError

from structgen.config import redact_url
from structgen.errors import CacheError, ConfigError, StructgenError
from structgen.schema.canonical import canonical_json
from structgen.signing import directory_secret
from structgen.types import StructuredResult
from structgen.validate import is_valid, model_value, parse_json, validate_text

if TYPE_CHECKING:
    from structgen.backends import GenerationRequest
    from structgen.config import CacheConfig
    from structgen.schema import CompiledOutput

log = logging.getLogger(__name__)

# 3: entries keep the validated text, not a dump of the value (entries written before the
# MAC was keyed fail it: they are dropped as damaged, and recomputed)
CACHE_FORMAT_VERSION = 3
ENTRY_PREFIX = "r:"  # result entries; everything else in a store is bookkeeping
STATS_PREFIX = "stats:"
_FLUSH_EVERY = 64  # counter updates buffered before they are written to the store
_FLUSH_INTERVAL_S = 5.0
# A frozen Redis must not hold a request for long: each operation gives up after this.
REDIS_TIMEOUT_S = 0.5
# After a store failure it is left alone this long, doubling per failure up to the max.
_BACKOFF_S = 1.0
_MAX_BACKOFF_S = 60.0


# Stores ----------------------------------------------------------------------------------
class Store(Protocol):
    """Key → text storage. Values are str; a store never unpickles anything."""

    def get(self, key: str) -> str | None: ...
    def set(self, key: str, value: str, ttl_s: float | None) -> None: ...
    def delete(self, key: str) -> None: ...
    def iter_keys(self) -> Iterator[str]: ...
    def size_bytes(self) -> int: ...
    def incr(self, key: str, delta: int) -> None: ...
    def counter(self, key: str) -> int: ...
    def clear(self) -> None: ...
    def close(self) -> None: ...


def _safe_disk_class() -> type:
    """A diskcache ``Disk`` that refuses to pickle or unpickle.

    diskcache pickles any value that is not str/bytes/int/float and unpickles rows whose
    mode says "pickle". A tampered cache.db could set that mode, so reads of such rows
    fail here instead of running ``pickle.loads``.
    """
    class SafeDisk(diskcache.Disk):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.written = threading.local()  # the value file this thread last created

        def put(self, key: Any) -> Any:
            if not isinstance(key, str):
                raise TypeError("structgen cache keys are str")
            return super().put(key)

        def get(self, key: Any, raw: bool) -> Any:
            if not raw:  # a pickled key: listed as foreign (skipped), never unpickled
                return _FOREIGN_KEY
            return super().get(key, raw)

        def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
            if read or not isinstance(value, str | int):
                raise TypeError("structgen cache values are str (or int counters)")
            return super().store(value, read, key=key)

        def fetch(self, mode: int, filename: str | None, value: Any, read: bool) -> Any:
            if mode == diskcache.core.MODE_PICKLE:
                raise _UnsafeRow("refusing to unpickle a cache value")
            if filename is not None:
                self._inside(filename)
                if not os.path.isfile(os.path.join(self._directory, filename)):
                    # a FIFO (or a directory) there would block the read or fail it
                    raise _UnsafeRow(f"cache row names something that is not a regular "
                                     f"file: {filename!r}")
            return super().fetch(mode, filename, value, read)

        def filename(self, key: Any = diskcache.core.UNKNOWN,
                     value: Any = diskcache.core.UNKNOWN) -> Any:
            names = super().filename(key, value)
            self.written.path = names[1]  # removed by DiskStore.set if the write fails
            return names

        def remove(self, file_path: str) -> Any:
            # diskcache deletes the row's file on delete/evict/cull: a tampered row must not
            # make it delete a file elsewhere. Refusing here leaves the file (and the row).
            try:
                self._inside(file_path)
            except _UnsafeRow as exc:
                log.warning("not removing %s: %s", file_path, exc)
                return None
            return super().remove(file_path)

        def _inside(self, filename: str) -> None:
            """A row's ``filename`` must name a file inside the cache directory.

            diskcache joins it to the directory as given, so an absolute path or ``..``
            in a tampered cache.db would read (or delete) any file the process can.
            """
            root = os.path.realpath(self._directory)
            full = os.path.realpath(os.path.join(self._directory, filename))
            if os.path.commonpath([root, full]) != root or full == root:
                raise _UnsafeRow(f"cache row names a file outside the cache directory: "
                                 f"{filename!r}")

    return SafeDisk


class _UnsafeRow(Exception):
    """A diskcache row asks to be unpickled (only a tampered database does)."""


_FOREIGN_KEY = object()  # stands for a key that is not ours (pickled by someone else)


class DiskStore:
    """diskcache (SQLite + files): process-safe, used by default."""

    def __init__(self, directory: Path) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # WAL + one SQLite connection per process/thread: several writers are safe.
            self._cache = diskcache.Cache(str(directory), disk=_safe_disk_class(),
                                          timeout=60, eviction_policy="least-recently-stored")
        except Exception as exc:  # sqlite3.Error, PermissionError, ...
            raise CacheError(f"cannot open cache directory {directory}: {exc}") from None
        self.directory = directory

    def get(self, key: str) -> str | None:
        try:
            value = self._cache.get(key)
        except (_UnsafeRow, UnicodeDecodeError, OSError) as exc:
            log.warning("dropping unreadable cache row %s: %s", key[:20], exc)
            self.delete(key)
            return None
        if value is None or isinstance(value, str):
            return value
        self.delete(key)  # an int or bytes where an entry should be: not ours
        return None

    def set(self, key: str, value: str, ttl_s: float | None) -> None:
        written = self._cache.disk.written
        written.path = None
        try:
            self._cache.set(key, value, expire=ttl_s)
        except BaseException:
            # a large value goes to a file of its own first: a write that failed after it
            # (full disk, locked database) must not leave it behind, unreferenced
            if written.path is not None:
                with contextlib.suppress(OSError):
                    os.remove(written.path)
            raise

    def delete(self, key: str) -> None:
        self._cache.delete(key)

    def iter_keys(self) -> Iterator[str]:
        # Only str keys are ours; a pickled, bytes or int key (another writer, or a
        # tampered cache.db) is skipped rather than breaking stats/export/clear.
        for key in self._cache.iterkeys():
            if isinstance(key, str):
                yield key

    def size_bytes(self) -> int:
        return int(self._cache.volume())

    def incr(self, key: str, delta: int) -> None:
        self._cache.incr(key, delta, default=0)

    def counter(self, key: str) -> int:
        value = self._cache.get(key, default=0)
        return value if isinstance(value, int) else 0

    def clear(self) -> None:
        self._cache.clear()

    def close(self) -> None:
        self._cache.close()


class RedisStore:
    """Redis: one cache shared by a fleet of workers. Keys live under ``structgen:``."""

    prefix = "structgen:"

    def __init__(self, url: str) -> None:
        try:
            import redis
        except ImportError:
            raise ConfigError("needs the redis client: pip install 'structgen[redis]'",
                              "cache.backend") from None
        try:
            self._r = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S,
                                           socket_connect_timeout=REDIS_TIMEOUT_S)
            self._r.ping()
        except (redis.RedisError, ValueError, OSError) as exc:
            # The URL may carry a password: errors and stats show it redacted.
            raise CacheError(f"cannot reach Redis at {redact_url(url)}: "
                             f"{str(exc).replace(url, redact_url(url))}") from None
        self.url = redact_url(url)
        self._raw_url = url  # only to scrub it from error messages

    def get(self, key: str) -> str | None:
        raw = self._r.get(self.prefix + key)
        if raw is None:
            return None
        try:
            return raw.decode("utf-8")  # type: ignore[union-attr]
        except UnicodeDecodeError:
            self.delete(key)
            return None

    def set(self, key: str, value: str, ttl_s: float | None) -> None:
        px = max(1, int(ttl_s * 1000)) if ttl_s else None
        self._r.set(self.prefix + key, value.encode("utf-8"), px=px)

    def delete(self, key: str) -> None:
        self._r.delete(self.prefix + key)

    def iter_keys(self) -> Iterator[str]:
        n = len(self.prefix)
        for k in self._r.scan_iter(match=self.prefix + "*", count=500):
            yield k.decode("utf-8", "replace")[n:]

    def size_bytes(self) -> int:
        total = 0
        batch: list[str] = []
        for key in self.iter_keys():
            batch.append(key)
            if len(batch) == 500:
                total += self._strlen(batch)
                batch = []
        return total + self._strlen(batch)

    def _strlen(self, keys: list[str]) -> int:
        pipe = self._r.pipeline(transaction=False)
        for k in keys:
            pipe.strlen(self.prefix + k)
        return sum(int(x) for x in pipe.execute())

    def incr(self, key: str, delta: int) -> None:
        self._r.incrby(self.prefix + key, delta)

    def counter(self, key: str) -> int:
        raw = self._r.get(self.prefix + key)
        try:
            return int(raw) if raw is not None else 0
        except ValueError:
            return 0

    def clear(self) -> None:
        keys = [self.prefix + k for k in self.iter_keys()]
        for i in range(0, len(keys), 500):
            self._r.delete(*keys[i:i + 500])

    def close(self) -> None:
        self._r.close()


# The cache -------------------------------------------------------------------------------
class NullCache:
    """``[cache] backend = "none"``: nothing is cached."""

    hits = 0
    misses = 0

    def cacheable(self, request: GenerationRequest) -> bool:
        return False

    def key(self, request: GenerationRequest, route: Sequence[str] = ()) -> str:
        return ""

    def get(self, key: str, output: CompiledOutput,
            down: Callable[[str], bool] | None = None) -> StructuredResult | None:
        return None

    def contains(self, key: str) -> bool:
        return False

    def put(self, key: str, request: GenerationRequest, result: StructuredResult) -> bool:
        return False

    def close(self) -> None:
        return None


class ResultCache:
    """Validated results in a :class:`Store`, with hit/miss counters.

    Store failures (Redis down, disk full) never fail a request: a failed read is a miss
    and a failed write is skipped, both logged and counted in ``errors``.
    """

    def __init__(self, config: CacheConfig, store: Store) -> None:
        self.config = config
        self.store = store
        self.secret = entry_secret(config)
        if self.secret is None:
            log.warning("result cache: no secret to sign entries with (set [cache] secret, "
                        "or make the cache directory writable): nothing is cached")
        self._skip_until = 0.0  # after a store failure: left alone until then
        self._backoff_s = _BACKOFF_S
        self._last_failure = ""
        self.hits = 0
        self.misses = 0
        self.errors = 0
        self.dropped = 0  # corrupted, expired-but-present or no-longer-valid entries
        self.last_write_error: str | None = None  # what the store said when a write failed
        self._pending = {"hits": 0, "misses": 0}
        self._last_flush = time.monotonic()
        self._lock = threading.Lock()
        self._closed = False
        _open_caches.add(self)

    # Key ------------------------------------------------------------------------------
    def cacheable(self, request: GenerationRequest) -> bool:
        """Deterministic requests are cached; sampled ones only with a seed or opt-in."""
        if request.output is None:
            return False
        s = request.sampling
        return s.temperature == 0 or s.seed is not None or self.config.cache_sampled

    def key(self, request: GenerationRequest, route: Sequence[str] = ()) -> str:
        """SHA-256 hex over everything that changes the answer (see module docstring).

        ``route``: the models that may answer a request without ``model=`` (those of the
        backends the router would try, e.g. ``["vllm:Qwen/Qwen3-8B", "local:SmolLM2"]``).
        """
        if request.output is None:
            raise StructgenError("only requests with an output constraint are cacheable")
        s = request.sampling
        body = (CACHE_FORMAT_VERSION, request.messages, request.output.hash,
                request.output.kind, request.model or "|".join(route),
                float(s.temperature), float(s.top_p), s.seed, s.max_tokens, list(s.stop),
                bool(request.reasoning), request.whitespace)
        if request.tools is not None:
            # the tools reach the prompt too (chat template), and the choice and parallel
            # change what may be answered: all of them, not only the envelope's schema
            t = request.tools
            body += (t.openai_tools(), t.choice, t.parallel)  # type: ignore[assignment]
        return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()

    # Read / write ---------------------------------------------------------------------
    def get(self, key: str, output: CompiledOutput,
            down: Callable[[str], bool] | None = None) -> StructuredResult | None:
        """The cached result for ``key``, validated against ``output``; None on a miss.

        ``down(backend)`` says whether the router would still pass ``backend`` over now;
        with it, an entry answered by a fallback is a miss once a backend it stood in for
        is no longer known to be down (the request then goes to that backend again).
        """
        entry = self._read(key)
        if entry is not None and down is not None and not all(
                down(name) for name in entry.get("passed_over", ())):
            entry = None  # left in place: the fresh answer overwrites it
        if entry is not None:
            value = _revalidate(entry, output)
            if value is not _INVALID:
                self._count("hits")
                return StructuredResult(
                    value=value, raw_text=entry["text"], backend=entry["backend"],
                    model=entry["model"], cached=True, repaired=entry.get("repaired", False),
                    cache_key=key)
            self._drop(key, "cached value no longer validates")
        self._count("misses")
        return None

    def contains(self, key: str) -> bool:
        """Whether a well-formed, unexpired entry exists (does not count as hit or miss)."""
        return self._read(key) is not None

    def put(self, key: str, request: GenerationRequest, result: StructuredResult) -> bool:
        """Store ``result`` under ``key``; False (logged, counted) when the write failed.

        What is stored is ``result.raw_text``, the validated text the value was made from
        (re-validating it gives the same value; a dump of the value need not).
        """
        body = json.dumps({
            "v": CACHE_FORMAT_VERSION, "key": key, "created_at": time.time(),
            "ttl_s": self.config.ttl_s, "backend": result.backend, "model": result.model,
            "kind": request.output.kind if request.output else None,
            "schema": request.output.hash if request.output else None,
            "repaired": result.repaired, "text": result.raw_text,
            "passed_over": _passed_over(result)}, ensure_ascii=False, separators=(",", ":"))
        try:
            self.put_raw(key, body)
        except CacheError as exc:  # a cache write must never fail the request
            self.last_write_error = str(exc)
            log.warning("%s", exc)
            return False
        return True

    def put_raw(self, key: str, body: str) -> None:
        """Store an already-encoded entry body; raises :class:`CacheError` when the store
        refuses the write (callers that must not fail, like :meth:`put`, catch it)."""
        if self.secret is None:
            raise CacheError("result cache write skipped: no secret to sign the entry with "
                             "(set [cache] secret, or make the cache directory writable)")
        if self._resting():
            raise CacheError(f"result cache write skipped: the store failed a moment ago "
                             f"({self._last_failure}; retried in "
                             f"{self._skip_until - time.monotonic():.1f} s)")
        try:
            self.store.set(ENTRY_PREFIX + key, entry_mac(self.secret, body) + body,
                           self.config.ttl_s)
        except Exception as exc:  # redis.RedisError, sqlite3.Error, OSError, ...
            self._failed("write", exc)
            raise CacheError(f"result cache write failed: {type(exc).__name__}: "
                             f"{_redacted(str(exc), self.store)}") from None
        self._backoff_s = _BACKOFF_S

    def decode(self, raw: str) -> dict[str, Any] | None:
        """A raw store value as an entry; None when it does not verify or is malformed."""
        return decode_entry(raw, self.secret)

    def _resting(self) -> bool:
        """Is the store being left alone after a failure?"""
        return time.monotonic() < self._skip_until

    def _failed(self, what: str, exc: Exception) -> None:
        """Count a store failure and leave the store alone for a while (doubling)."""
        self.errors += 1
        self._skip_until = time.monotonic() + self._backoff_s
        self._last_failure = f"{what}: {type(exc).__name__}: {_redacted(str(exc), self.store)}"
        log.warning("result cache %s failed (%s: %s); the store is skipped for %.0f s", what,
                    type(exc).__name__, _redacted(str(exc), self.store), self._backoff_s)
        self._backoff_s = min(_MAX_BACKOFF_S, self._backoff_s * 2)

    def _read(self, key: str) -> dict[str, Any] | None:
        if self.secret is None or self._resting():
            return None
        try:
            raw = self.store.get(ENTRY_PREFIX + key)
        except Exception as exc:  # an unreachable store is a miss
            self._failed("read", exc)
            return None
        self._backoff_s = _BACKOFF_S
        if raw is None:
            return None
        entry = decode_entry(raw, self.secret)
        if entry is None or entry.get("key") != key:
            self._drop(key, "corrupted entry")
            return None
        ttl = entry.get("ttl_s")
        if ttl is not None and entry["created_at"] + ttl < time.time():
            self._drop(key, "expired entry")
            return None
        return entry

    def _drop(self, key: str, why: str) -> None:
        self.dropped += 1
        log.warning("result cache: dropping %s (%s)", key[:16], why)
        try:
            self.store.delete(ENTRY_PREFIX + key)
        except Exception as exc:
            self._failed("delete", exc)

    # Counters -------------------------------------------------------------------------
    def _count(self, name: str) -> None:
        # Persisted counters are buffered: a store write per hit would cost more than the hit.
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)
            self._pending[name] += 1
            due = (sum(self._pending.values()) >= _FLUSH_EVERY
                   or time.monotonic() - self._last_flush > _FLUSH_INTERVAL_S)
        if due:
            self.flush()

    def flush(self) -> None:
        """Write buffered hit/miss counts to the store (shared with other processes)."""
        with self._lock:
            pending, self._pending = self._pending, {"hits": 0, "misses": 0}
            self._last_flush = time.monotonic()
        if self._resting():
            return  # these counts are lost: a store that is down is not waited for
        try:
            for name, n in pending.items():
                if n:
                    self.store.incr(STATS_PREFIX + name, n)
        except Exception as exc:
            self._failed("counter update", exc)

    # Maintenance (the `structgen cache` command) -------------------------------------
    # These talk to the store directly, so a damaged one (a tampered or foreign cache.db,
    # a Redis that refuses) is a CacheError naming it, never an exception from below.
    @property
    def location(self) -> str:
        """Where the entries live (a directory, or the Redis URL without its password)."""
        return (str(self.store.directory) if isinstance(self.store, DiskStore)
                else str(getattr(self.store, "url", "")))

    @contextlib.contextmanager
    def _maintenance(self, what: str) -> Iterator[None]:
        try:
            yield
        except CacheError:
            raise
        except Exception as exc:  # sqlite3.Error, redis.RedisError, OSError, ...
            raise CacheError(f"cannot {what} the result cache at {self.location}: "
                             f"{type(exc).__name__}: {_redacted(str(exc), self.store)}"
                             ) from None

    def stats(self) -> dict[str, Any]:
        """entries, bytes, hits, misses (persisted, all processes), plus where it lives."""
        self.flush()
        with self._maintenance("read"):
            entries = sum(1 for k in self.store.iter_keys() if k.startswith(ENTRY_PREFIX))
            return {"backend": self.config.backend, "location": self.location,
                    "entries": entries, "bytes": self.store.size_bytes(),
                    "hits": self.store.counter(STATS_PREFIX + "hits"),
                    "misses": self.store.counter(STATS_PREFIX + "misses")}

    def clear(self) -> int:
        """Delete every entry and the counters; returns how many entries there were."""
        with self._maintenance("clear"):
            n = sum(1 for k in self.store.iter_keys() if k.startswith(ENTRY_PREFIX))
            with self._lock:
                self._pending = {"hits": 0, "misses": 0}
            self.store.clear()
            return n

    def export(self) -> Iterator[dict[str, Any]]:
        """Every valid, unexpired entry as a JSON-able dict (one JSONL line each)."""
        with self._maintenance("read"):
            keys = list(self.store.iter_keys())
        for k in keys:
            if k.startswith(ENTRY_PREFIX):
                entry = self._read(k[len(ENTRY_PREFIX):])
                if entry is not None:
                    yield entry

    def import_entry(self, entry: Any) -> bool:
        """Store one exported entry; False (and nothing stored) when it is malformed."""
        if not _well_formed(entry) or entry["v"] != CACHE_FORMAT_VERSION:
            return False
        ttl = entry.get("ttl_s")
        if ttl is not None and entry["created_at"] + ttl < time.time():
            return False
        self.put_raw(entry["key"], json.dumps(entry, ensure_ascii=False,
                                              separators=(",", ":")))  # CacheError: fatal
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.flush()
        _open_caches.discard(self)
        with contextlib.suppress(Exception):
            self.store.close()


_INVALID = object()
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "v": int, "key": str, "created_at": (int, float), "backend": str, "model": str, "text": str}
# Router trail reasons that can change while an entry lives (see Router.agenerate); a
# backend skipped for good (cannot constrain this kind, not installed) is not waited for.
_TRANSIENT_SKIPS = ("circuit open", "health probe failed")


def _passed_over(result: StructuredResult) -> list[str]:
    """Backends tried or skipped for a reason that may pass, before the one that answered."""
    names: list[str] = []
    for attempt in result.attempts:
        if attempt.ok:
            break
        if attempt.error is not None or attempt.skipped in _TRANSIENT_SKIPS:
            names.append(attempt.backend)
    return names


def _redacted(message: str, store: Store) -> str:
    raw = getattr(store, "_raw_url", None)
    return message.replace(raw, redact_url(raw)) if raw else message


def _well_formed(entry: Any) -> bool:
    """Every field an entry needs, with its type; times are finite numbers (an import file
    is untrusted: ``1e400`` or a 400-digit int must not become an entry that never expires
    or an OverflowError)."""
    if not isinstance(entry, dict):
        return False
    passed = entry.get("passed_over", [])
    return (all(isinstance(entry.get(k), t) and not isinstance(entry.get(k), bool)
                for k, t in _REQUIRED.items())
            and _KEY.fullmatch(entry["key"]) is not None
            and _finite(entry["created_at"])
            and (entry.get("ttl_s") is None or (_finite(entry["ttl_s"]) and entry["ttl_s"] > 0))
            and isinstance(passed, list) and all(isinstance(n, str) for n in passed))


_KEY = re.compile(r"[0-9a-f]{64}")


def _finite(x: Any) -> bool:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return False
    try:
        return math.isfinite(float(x))
    except OverflowError:
        return False


def entry_secret(config: CacheConfig) -> bytes | None:
    """The key entries are signed with: ``[cache] secret``, else the cache directory's own
    (for Redis too: then only this machine's workers share entries)."""
    if config.secret:
        return hashlib.sha256(config.secret.encode("utf-8")).digest()
    return directory_secret(_directory(config))


def entry_mac(secret: bytes, body: str) -> str:
    return hmac.new(secret, body.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


def decode_entry(raw: str, secret: bytes | None) -> dict[str, Any] | None:
    """Check the MAC and parse an entry; None when it is corrupted or forged in any way."""
    if len(raw) < 66 or secret is None:
        return None
    tag, body = raw[:64], raw[64:]
    if not hmac.compare_digest(entry_mac(secret, body).encode(),
                               tag.encode("utf-8", "surrogatepass")):
        return None
    try:
        entry = json.loads(body)
    except (ValueError, RecursionError):  # JSONDecodeError, or an int past Python's limit
        return None
    if not _well_formed(entry) or entry["v"] != CACHE_FORMAT_VERSION:
        return None
    return entry


def _revalidate(entry: dict[str, Any], output: CompiledOutput) -> Any:
    """The cached text validated as on the miss, or _INVALID when it no longer fits.

    JSON goes the way ``validate_text`` takes it (strict parse, schema, then the model on
    the parsed data, so the value is the miss's), with the schema's validator looked up by
    hash: the hit path must not re-encode the schema on every call."""
    try:
        if output.kind != "json":
            outcome = validate_text(entry["text"], output)
            return outcome.value if outcome.ok else _INVALID
        data, errors = parse_json(entry["text"])
        if errors or not is_valid(data, output):
            return _INVALID
        if output.model is None:
            return data

        try:
            return model_value(output.model, data, entry["text"])
        except ValidationError:
            return _INVALID
    except (RecursionError, ValueError):  # a tampered entry's pathological text
        return _INVALID


def open_store(config: CacheConfig) -> Store:
    """The configured store (disk directory or Redis URL)."""
    if config.backend == "redis":
        return RedisStore(config.url)
    return DiskStore(_directory(config))


def _directory(config: CacheConfig) -> Path:
    return Path(config.dir).expanduser() if config.dir else (
        Path.home() / ".cache" / "structgen" / "results")


def open_result_cache(config: CacheConfig) -> ResultCache | NullCache:
    """The result cache ``[cache]`` asks for (``backend = "none"`` → :class:`NullCache`)."""
    if config.backend == "none":
        return NullCache()
    return ResultCache(config, open_store(config))


# Counters buffered in memory reach the store when the process exits normally.
_open_caches: weakref.WeakSet[ResultCache] = weakref.WeakSet()


@atexit.register
def _flush_all() -> None:
    for cache in list(_open_caches):
        cache.flush()
