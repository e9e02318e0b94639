"""Compiled-grammar cache: memory LRU + disk (+ Redis), keyed by
(schema hash, tokenizer hash, engine, engine version).

Compiling a grammar against a tokenizer is the expensive step of constrained decoding
(xgrammar: tens of ms to seconds for a large schema). This cache keeps compiled grammars in
an in-process LRU and, when the caller says how to (a :class:`Codec`), their serialized form
on disk, so a process restart does not recompile.

Compiles run in a worker thread with a deadline. A schema whose compile runs past
``timeout_s`` raises :class:`GrammarCompileTimeout` and is recorded on disk, so later calls
fail fast instead of retrying forever; the caller falls back to a looser grammar plus
validation. (A thread cannot be killed: the timed-out compile keeps running in the
background, and if it finishes its result is cached and the record cleared.)

Disk entries (and timeout records) carry an HMAC-SHA256 of their key and payload under a
per-directory secret (``.secret``, 32 random bytes, mode 0600, made on first use). A file
whose MAC does not verify (forged, copied from another cache, or written by an older
version) is deleted and the grammar recompiled; it never reaches the C++ deserializer.

With ``[cache] backend = "redis"`` the same signed entries also go to that Redis
(:class:`RedisTier`, under ``structgen:grammar:``), so a fleet of workers compiles a grammar
(or checks a tool set, :func:`text_store`) once. Its entries are signed with ``[cache]
secret`` (else the grammar directory's own secret: then only this machine's workers trust
each other's entries); an entry that does not verify is a miss, never loaded. Each Redis
operation gives up after :data:`REDIS_TIMEOUT_S`, and a failure leaves Redis alone for a
while (1 s, doubling to a minute): a Redis that is down costs a compile, not a request.

>>> cache = default_grammar_cache()
>>> key = (compiled.hash, tokenizer_hash, "xgrammar", xgrammar_version)   # doctest: +SKIP
>>> grammar = cache.get_or_compile(key, lambda: compiler.compile_json_schema(s),
...                                codec=xgrammar_codec(tokenizer_info),
...                                timeout_s=10)                           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from structgen.errors import ConfigError, GrammarCompileTimeout
from structgen.signing import directory_secret

if TYPE_CHECKING:
    from structgen.config import CacheConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
GrammarKey = tuple[str, str, str, str]  # (schema hash, tokenizer hash, engine, engine version)

DISK_FORMAT_VERSION = 2  # 2: entries carry a keyed MAC instead of an unkeyed SHA-256
REDIS_TIMEOUT_S = 0.5  # each Redis operation (a frozen Redis must not hold a compile)
REDIS_BACKOFF_S = (1.0, 60.0)  # after a failure: first pause, longest pause
REDIS_MAX_ENTRY_BYTES = 64 << 20  # larger serialized grammars stay on disk only


@dataclass(frozen=True)
class Codec(Generic[T]):
    """How to turn a compiled grammar into text for the disk layer and back."""

    dumps: Callable[[T], str]
    loads: Callable[[str], T]


def text_codec() -> Codec[str]:
    """For grammars that are text already (llguidance: the validated grammar string)."""
    return Codec(dumps=lambda s: s, loads=lambda s: s)


def xgrammar_codec(tokenizer_info: Any) -> Codec[Any]:
    """xgrammar ``CompiledGrammar`` ⇄ its own JSON serialization (bound to ``tokenizer_info``).

    ``deserialize_json`` checks the tokenizer metadata and the serialization version, so a
    stale file raises instead of returning a wrong grammar (the cache then recompiles).
    """
    import xgrammar

    return Codec(dumps=lambda g: g.serialize_json(),
                 loads=lambda s: xgrammar.CompiledGrammar.deserialize_json(s, tokenizer_info))


def tokenizer_hash(tokenizer: Any) -> str:
    """A stable identity for a Hugging Face tokenizer: vocab + special tokens + class.

    Memoized on the tokenizer object, since hashing a 50k-entry vocab costs milliseconds.
    """
    cached = getattr(tokenizer, "_structgen_hash", None)
    if isinstance(cached, str):
        return cached
    vocab = tokenizer.get_vocab()
    body = {"cls": type(tokenizer).__name__,
            "vocab": sorted(vocab.items(), key=lambda kv: kv[1]),
            "special": sorted(str(t) for t in getattr(tokenizer, "all_special_tokens", [])),
            "eos": getattr(tokenizer, "eos_token_id", None)}
    digest = hashlib.sha256(json.dumps(body, ensure_ascii=False).encode()).hexdigest()
    # a tokenizer with __slots__ cannot keep it: then it is recomputed next time
    with contextlib.suppress(AttributeError):
        tokenizer._structgen_hash = digest
    return digest


class GrammarCache:
    """Memory LRU + optional disk directory of compiled grammars. Thread-safe.

    Concurrent callers asking for the same key wait for one compile instead of starting
    their own. ``hits`` counts memory and disk hits, ``disk_hits`` the disk ones only.
    """

    def __init__(self, max_entries: int = 256, directory: str | Path | None = None, *,
                 disk_min_compile_s: float = 0.0, background_writes: bool = False,
                 redis: RedisTier | None = None, secret: bytes | None = None) -> None:
        self.max_entries = max_entries
        self.directory = Path(directory) if directory is not None else None
        self.redis = redis
        # A grammar goes to disk only if compiling it took at least this long: XGrammar's
        # serialized form is large (88 MB for the intent schema on SmolLM2's vocabulary,
        # 4.5 s to write, 1.6 s to read back against a 3.1 s compile), so a fast compile is
        # cheaper than the file. Written in the background, off the request's path.
        self.disk_min_compile_s = disk_min_compile_s
        self.background_writes = background_writes
        self._writers: list[threading.Thread] = []
        self._mem: OrderedDict[GrammarKey, Any] = OrderedDict()
        self._lock = threading.Lock()
        self._inflight: dict[GrammarKey, _Inflight] = {}
        self._secret: bytes | None = secret  # None: the directory's own (made on first use)
        self.hits = 0
        self.disk_hits = 0
        self.redis_hits = 0
        self.misses = 0
        self.timeouts = 0

    # Public ---------------------------------------------------------------------------
    def get_or_compile(self, key: GrammarKey, compile_fn: Callable[[], T], *,
                       timeout_s: float | None = None, codec: Codec[T] | None = None,
                       store_s: float | None = None) -> T:
        """Return the cached compiled grammar for ``key`` or compile (and keep) it.

        ``key`` = (schema hash, tokenizer hash, engine name, engine version). With a
        ``codec`` the grammar is also read from / written to the disk directory (and
        Redis), when its compile took at least ``store_s`` (default:
        ``disk_min_compile_s``). With ``timeout_s`` the compile gets that long; past it
        :class:`GrammarCompileTimeout` is raised and recorded. An exception from
        ``compile_fn`` propagates unchanged.
        """
        key = tuple(map(str, key))  # type: ignore[assignment]
        with self._lock:
            if key in self._mem:
                self._mem.move_to_end(key)
                self.hits += 1
                return self._mem[key]
            flight = self._inflight.get(key)
            owner = flight is None
            if flight is None:
                flight = self._inflight[key] = _Inflight()
        if not owner:
            return self._wait(key, flight, timeout_s)
        try:
            return self._load_or_compile(key, flight, compile_fn, timeout_s, codec,
                                         self.disk_min_compile_s if store_s is None else store_s)
        finally:
            with self._lock:
                if not flight.running:
                    self._inflight.pop(key, None)

    def timed_out(self, key: GrammarKey) -> float | None:
        """The deadline this key is recorded as having missed, or None."""
        path = self._path(key, ".timeout")
        if path is None or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text())
            timeout_s = float(record["timeout_s"])
            if self._verify(record, key, repr(timeout_s)):
                return timeout_s
        except (OSError, ValueError, KeyError, TypeError, RecursionError):
            pass
        path.unlink(missing_ok=True)  # forged or unreadable: it must not block compiles
        return None

    def clear(self, *, disk: bool = False) -> None:
        """Forget every grammar in memory (and on disk with ``disk=True``)."""
        with self._lock:
            self._mem.clear()
        if disk and self.directory is not None and self.directory.is_dir():
            for path in self.directory.rglob("*"):
                if path.is_file() and path.suffix in (".json", ".timeout", ".tmp"):
                    path.unlink(missing_ok=True)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait for background disk writes to finish."""
        with self._lock:
            writers = list(self._writers)
        for writer in writers:
            writer.join(timeout_s)

    def stats(self) -> dict[str, int]:
        return {"entries": len(self._mem), "hits": self.hits, "disk_hits": self.disk_hits,
                "redis_hits": self.redis_hits, "misses": self.misses,
                "timeouts": self.timeouts}

    # Internals ------------------------------------------------------------------------
    def _load_or_compile(self, key: GrammarKey, flight: _Inflight, compile_fn: Callable[[], T],
                         timeout_s: float | None, codec: Codec[T] | None,
                         store_s: float) -> T:
        if codec is not None:
            value = self._read_disk(key, codec)
            tier = "disk"
            if value is None and self.redis is not None:
                value, tier = self._read_redis(key, codec), "redis"
            if value is not None:
                with self._lock:
                    self.hits += 1
                    if tier == "disk":
                        self.disk_hits += 1
                    else:
                        self.redis_hits += 1
                self._remember(key, value)
                flight.finish(value)
                return value
        # A longer deadline than the one missed earns one more try; an equal or shorter one
        # fails fast (that is what "not retried forever" means). A caller without a deadline
        # (an engine that bounds its own compiles) neither reads nor writes these records.
        recorded = None if timeout_s is None else self.timed_out(key)
        if recorded is not None and timeout_s is not None and timeout_s <= recorded:
            self.timeouts += 1
            flight.fail(GrammarCompileTimeout(key, recorded, recorded=True))
            raise flight.error  # type: ignore[misc]
        with self._lock:
            self.misses += 1

        def compile_and_store() -> None:
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                value = compile_fn()
            except BaseException as exc:  # re-raised in the caller's thread
                error = exc
            with flight.state:  # from here on the caller waits for us instead of giving up
                flight.ended = True
                late = flight.timed_out
            if error is not None:
                flight.fail(error)
                if late:  # the caller gave up on us; nobody else will clear the slot
                    with self._lock:
                        self._inflight.pop(key, None)
                return
            self._remember(key, value)
            # it compiled after all: a timeout record no longer applies (one this caller
            # wrote is on disk by now). A grammar that missed a deadline goes to disk however
            # long this run took, and before the record goes: a process reading in between
            # would otherwise find neither and compile again.
            record = self._path(key, ".timeout") if timeout_s is not None else None
            missed = record is not None and record.exists()
            if codec is not None and (missed or time.perf_counter() - started >= store_s):
                if missed or not self.background_writes:
                    self._write_disk(key, value, codec)
                else:
                    writer = threading.Thread(target=self._write_disk, args=(key, value, codec),
                                              daemon=True, name="grammar-disk-write")
                    with self._lock:
                        self._writers = [w for w in self._writers if w.is_alive()] + [writer]
                    writer.start()
            if record is not None:
                record.unlink(missing_ok=True)
            flight.finish(value)
            if late:  # the caller gave up on us; nobody else will clear the in-flight slot
                with self._lock:
                    self._inflight.pop(key, None)

        if timeout_s is None:
            compile_and_store()
        else:
            flight.running = True
            _COMPILE_WORKERS.submit(compile_and_store)
            if not flight.wait(timeout_s):
                # Decided under the flight's lock: a compile that ends at this very moment
                # either sees the record (and removes it) or is waited for (no record).
                with flight.state:
                    gave_up = not flight.ended
                    if gave_up:
                        flight.timed_out = True
                        self.timeouts += 1
                        self._record_timeout(key, timeout_s)
                if gave_up:
                    raise GrammarCompileTimeout(key, timeout_s)
                flight.wait(None)  # ended just now: its result is moments away
            flight.running = False
        if flight.error is not None:
            raise flight.error
        return flight.value

    def _wait(self, key: GrammarKey, flight: _Inflight, timeout_s: float | None) -> Any:
        if not flight.wait(timeout_s):
            raise GrammarCompileTimeout(key, timeout_s or 0.0)
        if flight.error is not None:
            raise flight.error
        with self._lock:
            self.hits += 1
        return flight.value

    def _remember(self, key: GrammarKey, value: Any) -> None:
        with self._lock:
            self._mem[key] = value
            self._mem.move_to_end(key)
            while len(self._mem) > self.max_entries:
                self._mem.popitem(last=False)

    def _path(self, key: GrammarKey, suffix: str) -> Path | None:
        if self.directory is None:
            return None
        digest = self._name(key)
        engine = "".join(c for c in key[2] if c.isalnum() or c in "-_") or "engine"
        return self.directory / engine / f"{digest}{suffix}"

    def _read_disk(self, key: GrammarKey, codec: Codec[T]) -> T | None:
        path = self._path(key, ".json")
        if path is None or not path.is_file():
            return None
        try:
            value = self._entry_value(key, path.read_text(encoding="utf-8"), codec)
        except OSError:
            value = None
        if value is None:
            path.unlink(missing_ok=True)  # corrupt, stale or from another library version
        return value

    def _read_redis(self, key: GrammarKey, codec: Codec[T]) -> T | None:
        assert self.redis is not None
        name = self._name(key)
        text = self.redis.get(name)
        if text is None:
            return None
        value = self._entry_value(key, text, codec)
        if value is None:
            self.redis.delete(name)  # forged, damaged or signed under another secret
        return value

    def _entry_value(self, key: GrammarKey, text: str, codec: Codec[T]) -> T | None:
        """The value of a stored entry, or None when it does not verify (it never reaches
        ``codec.loads`` then) or does not load."""
        try:
            entry = json.loads(text)
            payload = entry["payload"]
            # checked before the payload reaches the (C++) deserializer
            if (entry.get("v") == DISK_FORMAT_VERSION and isinstance(payload, str)
                    and self._verify(entry, key, payload)):
                return codec.loads(payload)
        except Exception:  # any unreadable entry is a miss, never a crash
            pass
        return None

    def _write_disk(self, key: GrammarKey, value: T, codec: Codec[T]) -> None:
        """Write the entry to disk and to Redis (each where there is one)."""
        path = self._path(key, ".json")
        if path is None and self.redis is None:
            return
        try:
            payload = codec.dumps(value)
            mac = self._mac(key, payload)
            if mac is None:
                return
            entry = json.dumps({"v": DISK_FORMAT_VERSION, "key": list(key),
                                "created_at": time.time(), "mac": mac, "payload": payload})
            if path is not None:
                _atomic_write(path, entry)
        except Exception:  # a read-only or full disk only costs a recompile
            return
        if self.redis is not None and len(entry) <= REDIS_MAX_ENTRY_BYTES:
            self.redis.set(self._name(key), entry)

    def _name(self, key: GrammarKey) -> str:
        return hashlib.sha256("\x00".join(key).encode()).hexdigest()

    def _record_timeout(self, key: GrammarKey, timeout_s: float) -> None:
        path = self._path(key, ".timeout")
        if path is None:
            return
        mac = self._mac(key, repr(float(timeout_s)))
        if mac is None:
            return
        with contextlib.suppress(OSError):
            _atomic_write(path, json.dumps({"key": list(key), "timeout_s": timeout_s,
                                            "at": time.time(), "mac": mac}))

    # Binding files to their key ------------------------------------------------------
    def _mac(self, key: GrammarKey, payload: str) -> str | None:
        """HMAC-SHA256 of (key, payload) under this directory's secret; None without one."""
        secret = self._load_secret()
        if secret is None:
            return None
        msg = json.dumps([list(key), payload], ensure_ascii=False).encode("utf-8",
                                                                          "surrogatepass")
        return hmac.new(secret, msg, hashlib.sha256).hexdigest()

    def _verify(self, entry: dict[str, Any], key: GrammarKey, payload: str) -> bool:
        expected = self._mac(key, payload)
        mac = entry.get("mac")
        return (expected is not None and isinstance(mac, str) and list(entry["key"]) == list(key)
                and hmac.compare_digest(mac, expected))

    def _load_secret(self) -> bytes | None:
        """The directory's secret, made on first use (see :mod:`structgen.signing`)."""
        if self._secret is None and self.directory is not None:
            self._secret = directory_secret(self.directory)
        return self._secret


class RedisTier:
    """Signed grammar-cache entries in a Redis shared by workers (``structgen:grammar:``).

    Never raises: an operation that fails or takes longer than :data:`REDIS_TIMEOUT_S` is a
    miss (or a write not made), and Redis is then left alone for :data:`REDIS_BACKOFF_S`
    (doubling per failure). The connection is opened on first use."""

    prefix = "structgen:grammar:"

    def __init__(self, url: str, ttl_s: float | None = None) -> None:
        try:
            import redis
        except ImportError:
            raise ConfigError("the grammar cache's Redis tier needs the redis client: "
                              "pip install 'structgen[redis]'", "cache.backend") from None
        self._r = redis.Redis.from_url(url, socket_timeout=REDIS_TIMEOUT_S,
                                       socket_connect_timeout=REDIS_TIMEOUT_S)
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._pause = REDIS_BACKOFF_S[0]
        self.failures = 0

    def get(self, name: str) -> str | None:
        raw = self._call(lambda: self._r.get(self.prefix + name))
        if not isinstance(raw, bytes):
            return None
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return None

    def set(self, name: str, text: str) -> None:
        px = max(1, int(self.ttl_s * 1000)) if self.ttl_s else None
        self._call(lambda: self._r.set(self.prefix + name, text.encode("utf-8"), px=px))

    def delete(self, name: str) -> None:
        self._call(lambda: self._r.delete(self.prefix + name))

    def _call(self, op: Callable[[], Any]) -> Any:
        if time.monotonic() < self._down_until:
            return None
        try:
            result = op()
        except Exception:  # redis.RedisError, OSError, a timeout: a miss, then a pause
            with self._lock:
                self.failures += 1
                self._down_until = time.monotonic() + self._pause
                self._pause = min(self._pause * 2, REDIS_BACKOFF_S[1])
            return None
        with self._lock:
            self._pause = REDIS_BACKOFF_S[0]
        return result

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._r.close()


def text_store(cache: GrammarCache, kind: str) -> Callable[[str, Callable[[], str]], str]:
    """``(key, make) -> text``: the text kept under ``key`` in ``cache`` (memory, disk,
    Redis), made by ``make()`` and kept when it is in none of them, however fast ``make``
    was. For work upstream of grammars that is worth sharing as text: a tool set's
    compiled argument schemas (:func:`structgen.schema.toolset.envelope_output`)."""
    codec = text_codec()
    return lambda key, make: cache.get_or_compile((key, "", kind, "1"), make, codec=codec,
                                                  store_s=0.0)


class _Workers:
    """Reusable daemon threads that run compiles with a deadline.

    Starting a thread per compile cost 100-180 µs (measured here), a fifth of an llguidance
    compile; an idle worker picks the next job up in about 25 µs. A worker stuck in a
    compile past its deadline simply stays busy: the next job starts another thread, so a
    hung compile never delays a later one. Workers idle for ``idle_s`` exit.
    """

    def __init__(self, idle_s: float = 30.0) -> None:
        self.idle_s = idle_s
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._idle = 0  # workers waiting for a job that no submitted job has claimed yet

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            claimed = self._idle > 0
            if claimed:
                self._idle -= 1
        self._jobs.put(job)
        if not claimed:
            threading.Thread(target=self._run, daemon=True, name="grammar-compile").start()

    def _run(self) -> None:
        while True:
            try:
                job = self._jobs.get(timeout=self.idle_s)
            except queue.Empty:
                with self._lock:
                    if self._idle > 0:  # nobody is counting on this worker: leave
                        self._idle -= 1
                        return
                continue  # a job was submitted for this idle worker: it is on its way
            with contextlib.suppress(BaseException):  # jobs report their own errors
                job()
            with self._lock:
                self._idle += 1


_COMPILE_WORKERS = _Workers()
# A forked child has none of the parent's threads: it starts with a pool of its own.
os.register_at_fork(after_in_child=lambda: globals().update(_COMPILE_WORKERS=_Workers()))


class _Inflight:
    """One compile in progress; other callers for the same key wait for it to end.

    A lock held from creation until :meth:`finish`/:meth:`fail` serves as the "done" signal
    (a threading.Event costs a Condition and two locks, on every cold compile)."""

    __slots__ = ("_done", "ended", "error", "running", "state", "timed_out", "value")

    def __init__(self) -> None:
        self._done = threading.Lock()
        self._done.acquire()
        self.state = threading.Lock()  # orders "the compile ended" against "the caller gave up"
        self.value: Any = None
        self.error: BaseException | None = None
        self.running = False  # a worker thread still owns this compile
        self.ended = False
        self.timed_out = False

    def wait(self, timeout_s: float | None) -> bool:
        """True once the compile has ended, False if ``timeout_s`` passed first."""
        if not self._done.acquire(timeout=-1 if timeout_s is None else timeout_s):
            return False
        self._done.release()  # let the next waiter through
        return True

    def finish(self, value: Any) -> None:
        self.value = value
        self.running = False
        self._done.release()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.running = False
        self._done.release()


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temp file + rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def default_grammar_dir(config: CacheConfig | None = None) -> Path:
    """``[cache] grammar_dir``, else ``$STRUCTGEN_CACHE_GRAMMAR_DIR``, else
    ``~/.cache/structgen/grammars``."""
    configured = config.grammar_dir if config is not None else None
    configured = configured or os.environ.get("STRUCTGEN_CACHE_GRAMMAR_DIR")
    # "~/..." in config.toml means the home directory, as it does for [cache] dir
    return (Path(configured).expanduser() if configured
            else Path.home() / ".cache" / "structgen" / "grammars")


_caches: dict[tuple[Path, str | None], GrammarCache] = {}
_caches_lock = threading.Lock()


def default_grammar_cache(config: CacheConfig | None = None) -> GrammarCache:
    """The process-wide grammar cache for the configured directory (one per directory),
    with the Redis tier when ``[cache] backend = "redis"``."""
    directory = default_grammar_dir(config)
    url = config.url if config is not None and config.backend == "redis" else None
    with _caches_lock:
        cache = _caches.get((directory, url))
        if cache is None:
            assert config is not None or url is None
            secret = None if config is None or not config.secret else \
                hashlib.sha256(config.secret.encode("utf-8")).digest()
            tier = None
            if url is not None:
                try:
                    tier = RedisTier(url, config.ttl_s if config else None)
                except ConfigError as exc:  # no redis client: the result cache says so too
                    log.warning("grammar cache without its Redis tier: %s", exc)
            cache = _caches[(directory, url)] = GrammarCache(
                directory=directory, disk_min_compile_s=1.0, background_writes=True,
                redis=tier, secret=secret)
        return cache
