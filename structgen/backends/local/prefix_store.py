"""Prompt KV states on disk, so a new process does not prefill a prompt an earlier one did
(``[local] prefix_cache_disk_mb``; off at 0, the default).

An agent CLI started once per task, or a service restarted, sends the same ~1,000-token
system prompt again; on 2 CPU cores its prefill is ~3 s of a ~4 s request. The llama.cpp
runtime copies a prompt's KV state to host memory after its prefill (the in-memory prefix
cache); with this store it also writes it here, and a later process that finds no prefix in
memory reads the entry sharing the longest prefix from disk.

One file per prompt: ``SGKV2`` magic, an HMAC-SHA256 of the rest under the directory's
secret (:mod:`structgen.signing`), the token count, the tokens (int32), then llama.cpp's
state bytes (``llama_state_seq_get_data``). Files are written to a temporary name and
renamed (a reader never sees half a file); a file whose MAC does not verify (damaged,
forged: prompt A's state relabelled as prompt B's, or written without this install's
secret) is deleted, never handed to llama.cpp, and so is one llama.cpp refuses to restore.
Only regular files are read (a FIFO named ``*.kv`` would block the model load). The directory is keyed by everything the state
layout depends on (model file, llama.cpp version, flash attention), so a state is restored
only into the context that made it. The store is bounded: past the limit, the files read or
written longest ago go first.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import tempfile
import threading
from array import array
from pathlib import Path

from structgen.backends.local.runtime import common_prefix
from structgen.signing import directory_secret, mac, verify

log = logging.getLogger(__name__)

MAGIC = b"SGKV2"  # 2: an HMAC under the directory's secret, not a plain SHA-256
_HEAD = struct.Struct("<5s32sI")  # magic, HMAC-SHA256(rest), token count
# a prompt shorter than this is cheaper to prefill again than to read back
MIN_TOKENS = 64


class PrefixStore:
    """Prompt KV states in ``directory``, at most ``limit_bytes`` in all. Thread-safe."""

    def __init__(self, directory: Path, limit_bytes: int) -> None:
        self.directory = directory
        self.limit_bytes = limit_bytes
        self._lock = threading.Lock()
        self._writers: list[threading.Thread] = []
        # prompt tokens -> file, for every readable entry
        self.index: dict[tuple[int, ...], Path] = {}
        self._secret = directory_secret(directory)
        if self._secret is None:
            log.warning("prefix store %s has no readable secret: prompts are not persisted",
                        directory)
            self.limit_bytes = 0
            return
        try:
            for path in directory.glob("*.kv"):
                ids = self._read_ids(path)
                if ids is not None:
                    self.index[ids] = path
        except OSError as exc:  # an unusable directory: no disk layer, not a failed request
            log.warning("prefix store %s is not usable (%s): prompts are not persisted",
                        directory, exc)
            self.limit_bytes = 0

    @staticmethod
    def _read_ids(path: Path) -> tuple[int, ...] | None:
        if not path.is_file():  # a FIFO would block here, with the model's load lock held
            return None
        try:
            with path.open("rb") as f:
                magic, _, n = _HEAD.unpack(f.read(_HEAD.size))
                raw = f.read(4 * n)
        except (OSError, struct.error):
            return None
        if magic != MAGIC or len(raw) != 4 * n:
            return None
        return tuple(array("i", raw))

    def best(self, ids: list[int]) -> tuple[tuple[int, ...] | None, int]:
        """The stored prompt sharing the longest prefix with ``ids``, and that length."""
        best_key, best = None, 0
        with self._lock:
            for key in self.index:
                n = common_prefix(key, ids)
                if n > best:
                    best_key, best = key, n
        return best_key, best

    def read(self, key: tuple[int, ...]) -> bytes | None:
        """The state stored for prompt ``key``, or None (gone, or damaged: then deleted)."""
        with self._lock:
            path = self.index.get(key)
        if path is None:
            return None
        try:
            data = path.read_bytes() if path.is_file() else b""
        except OSError:
            data = b""
        head = data[:_HEAD.size]
        if len(head) == _HEAD.size:
            magic, tag, n = _HEAD.unpack(head)
            rest = data[_HEAD.size:]
            if magic == MAGIC and verify(self._secret, tag, rest):
                with contextlib.suppress(OSError):
                    os.utime(path)  # recently used: evicted last
                return rest[4 * n:]
        log.warning("prefix store: %s is damaged or not signed by this install, deleted",
                    path)
        self._forget(key, path)
        return None

    def discard(self, key: tuple[int, ...]) -> None:
        """Delete the entry of prompt ``key`` (llama.cpp refused to restore its state: read
        again, it would be refused again)."""
        with self._lock:
            path = self.index.get(key)
        if path is not None:
            log.warning("prefix store: llama.cpp refused the state in %s, deleted", path)
            self._forget(key, path)

    def write(self, key: tuple[int, ...], state: bytes) -> None:
        """Store the state of prompt ``key`` (skipped when short, known or over the limit)."""
        if len(key) < MIN_TOKENS or self.limit_bytes <= 0 or self._secret is None:
            return
        rest = array("i", key).tobytes() + state
        blob = _HEAD.pack(MAGIC, mac(self._secret, rest), len(key)) + rest
        if len(blob) > self.limit_bytes:
            return
        name = hashlib.sha256(array("i", key).tobytes()).hexdigest()[:40] + ".kv"
        path = self.directory / name
        with self._lock:
            if key in self.index:
                return
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            os.replace(tmp, path)
        except OSError as exc:  # a full or read-only disk costs a prefill later, no more
            log.warning("prefix store: could not write %s (%s)", path, exc)
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
            return
        with self._lock:
            self.index[key] = path
        self._trim()

    def write_later(self, key: tuple[int, ...], state: bytes) -> None:
        """:meth:`write` on a thread of its own: the decode loop does not wait for the disk
        (hashing and writing a 1,000-token SmolLM2 state, ~23 MB, takes tens of ms)."""
        if len(key) < MIN_TOKENS or self.limit_bytes <= 0:
            return
        writer = threading.Thread(target=self.write, args=(key, state), daemon=True,
                                  name="structgen-prefix-write")
        with self._lock:
            self._writers = [w for w in self._writers if w.is_alive()]
            self._writers.append(writer)
        writer.start()

    def flush(self) -> None:
        """Wait for the writes in flight."""
        with self._lock:
            writers = list(self._writers)
        for w in writers:
            w.join()

    def _forget(self, key: tuple[int, ...], path: Path) -> None:
        with self._lock:
            self.index.pop(key, None)
        path.unlink(missing_ok=True)

    def _trim(self) -> None:
        """Delete the files used longest ago until the store is within its limit."""
        entries = []
        for path in self.directory.glob("*.kv"):
            try:
                st = path.stat()
            except OSError:
                continue
            entries.append((st.st_mtime_ns, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        if total <= self.limit_bytes:
            return
        by_path = {p: k for k, p in self.index.items()}
        for _, size, path in sorted(entries, key=lambda e: e[0]):
            if total <= self.limit_bytes:
                break
            key = by_path.get(path)
            if key is not None:
                self._forget(key, path)
            else:
                path.unlink(missing_ok=True)
            total -= size
