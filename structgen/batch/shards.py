"""``structgen batch IN.jsonl -o DIR --ray --shards``: the answers written by the actors
themselves, as a directory of shards, for jobs too large to pass through the driver.

Without ``--shards`` every answer comes back to the driver, which appends it to one file
(:mod:`structgen.batch.job`). With it, each Ray batch's actor writes that batch's output lines
to a shard and the driver gets back only their counts::

    DIR/part-000000137-5c0f…e2.jsonl   one Ray batch's lines (named by the input lines in it)
    DIR/part-driver.jsonl              the driver's own: malformed lines' errors
    DIR/.structgen-batch               this run's id (the fence) and the lock of the driver

``cat DIR/part-*.jsonl`` is the whole output, in OpenAI's result format as ever (or the
compact format's lines), each ``custom_id`` once.

Exactly once, with actors on other machines writing:

- A shard is written to a temporary file, made durable, and renamed into place: it is there
  whole or not at all. Its name comes from the input lines in it, so a batch Ray retries
  (an actor lost after writing, before it answered) replaces its own shard instead of adding
  a second copy: Ray retries a task with the same input, and the batches cut from it are the
  same.
- A re-run reads the shards there are and skips their lines, as with one file.
- A run begins by writing a new run id to the fence. An actor commits a shard only while
  the fence holds its own run's id, so an actor of a killed run that is still finishing a
  batch (Ray takes the actors of a dead driver down within seconds) cannot add lines the
  new run also answers: the new run waits :data:`FENCE_GRACE_S` after moving the fence (the
  window between an actor's check and its rename) before it reads the shards.

``DIR`` must be a directory every node of the cluster sees at the same path (a shared file
system; on one machine, any directory). An actor that cannot see it fails its batch with a
message saying so, and the job stops.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from structgen.batch.job import JobLine, ResultFile, is_done, remember
from structgen.errors import ConfigError, ExecutorError

FENCE = ".structgen-batch"
DRIVER_PART = "part-driver.jsonl"
TMP_PREFIX = ".tmp-"
FENCE_GRACE_S = 0.5


def shard_name(lines: list[int]) -> str:
    """A batch's shard: its first input line, and a digest of all of them."""
    digest = hashlib.sha256(",".join(map(str, sorted(lines))).encode()).hexdigest()[:16]
    return f"part-{min(lines):09d}-{digest}.jsonl"


class ShardDir:
    """The driver's view of a shard directory: what it holds, the fence, its own part.

    Opening it takes the directory's lock (a second driver on the same directory is refused
    while the first runs), moves the fence to a new run id, removes the temporary files of
    earlier runs and reads every committed shard.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done_ids: set[str] = set()
        self.done_lines: set[int] = set()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the shard directory {path}: {exc}") from None
        if not path.is_dir():
            raise ConfigError(f"--shards: {path} is not a directory")
        self.run = uuid.uuid4().hex
        self.fd = self._lock(path / FENCE)
        try:
            os.ftruncate(self.fd, 0)
            os.pwrite(self.fd, self.run.encode(), 0)
            os.fsync(self.fd)
            time.sleep(FENCE_GRACE_S)  # a late actor of a killed run: its rename lands now
            for entry in path.iterdir():
                if entry.name.startswith(TMP_PREFIX):
                    entry.unlink(missing_ok=True)
            self.driver = ResultFile(path / DRIVER_PART)
        except BaseException:
            os.close(self.fd)
            raise
        try:
            self.done_ids |= self.driver.done_ids
            self.done_lines |= self.driver.done_lines
            for shard in sorted(path.glob("part-*.jsonl")):
                if shard.name != DRIVER_PART:
                    self._read(shard)
        except BaseException:
            self.close()
            raise

    @staticmethod
    def _lock(fence: Path) -> int:
        try:
            fd = os.open(fence, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise ConfigError(f"cannot write to the shard directory: {exc}") from None
        try:
            import fcntl
        except ImportError:  # not on this platform: one job per directory is the user's
            return fd
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(f"another structgen batch is writing to {fence.parent}; wait "
                              "for it or choose another output") from None
        return fd

    def _read(self, shard: Path) -> None:
        for n, text in enumerate(shard.read_bytes().splitlines(), start=1):
            try:
                remember(self, text)
            except ConfigError:
                raise ConfigError(f"{shard} line {n} is not a batch result line: is "
                                  f"{self.path} the output of this batch?") from None

    def done(self, item: JobLine) -> bool:
        return is_done(self, item)

    def write(self, obj: dict[str, Any]) -> None:
        """One of the driver's own lines (an error line), in ``part-driver.jsonl``."""
        self.driver.write(obj)

    def close(self) -> None:
        self.driver.close()
        os.close(self.fd)


def commit_shard(path: Path, run: str, lines: list[int], out: list[dict[str, Any]]) -> None:
    """Write one batch's output lines as its shard (an actor, on any node): temporary file,
    fsync, then, if the fence still holds ``run``, rename into place. A batch of a run that
    is no longer the current one is dropped (ExecutorError)."""
    fence = path / FENCE
    try:
        current = fence.read_text()
    except OSError as exc:
        raise ExecutorError(
            f"cannot read the shard directory {path} on this node ({exc}): --shards needs "
            "a directory every node of the cluster sees at the same path") from None
    if current != run:
        raise ExecutorError(f"the batch job writing to {path} was started again by another "
                            "run: this stale batch is dropped")
    tmp = path / f"{TMP_PREFIX}{uuid.uuid4().hex}"
    data = "".join(json.dumps(obj, ensure_ascii=False) + "\n" for obj in out).encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        if fence.read_text() != run:  # moved while this shard was written
            tmp.unlink(missing_ok=True)
            raise ExecutorError(f"the batch job writing to {path} was started again by "
                                "another run: this stale batch is dropped")
        os.replace(tmp, path / shard_name(lines))
        _sync_dir(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ExecutorError(f"cannot write a shard in {path}: {exc}") from None


def _sync_dir(path: Path) -> None:
    """The rename made durable (POSIX: fsync the directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
