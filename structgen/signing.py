"""Keyed MACs for what structgen writes to disk or a shared store and later trusts.

A plain checksum catches a damaged file; it does not stop a forged one (whoever can write
the file can write its checksum). The compiled-grammar cache, the prompt KV store and the
result cache sign what they write with HMAC-SHA256 under a secret that only this
installation has: ``.secret`` (32 random bytes, hex, mode 0600) in the store's directory,
made on first use. A file that does not verify is treated as missing.

>>> secret = directory_secret(Path("/tmp/store"))          # doctest: +SKIP
>>> tag = mac(secret, b"key", b"payload")                  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from pathlib import Path

SECRET_NAME = ".secret"
MAC_BYTES = 32  # HMAC-SHA256


def directory_secret(directory: Path) -> bytes | None:
    """The secret of ``directory``, made on first use (O_EXCL: concurrent processes agree);
    None when it cannot be read or made (then nothing is signed, and nothing trusted)."""
    path = directory / SECRET_NAME
    try:
        directory.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(os.urandom(32).hex())
        if not path.is_file():  # a FIFO or a directory put there would block or fail
            return None
        text = ""
        for _ in range(50):  # another process may be between create and write
            text = path.read_text(encoding="ascii").strip()
            if text:
                break
            time.sleep(0.01)
        secret = bytes.fromhex(text)
    except (OSError, ValueError):  # unreadable: no signed layer rather than a weak one
        return None
    return secret if len(secret) >= 16 else None


def mac(secret: bytes, *parts: bytes) -> bytes:
    """HMAC-SHA256 of ``parts`` (each length-prefixed, so no two splits collide)."""
    tag = hmac.new(secret, digestmod=hashlib.sha256)
    for part in parts:
        tag.update(len(part).to_bytes(8, "little"))
        tag.update(part)
    return tag.digest()


def verify(secret: bytes | None, tag: bytes, *parts: bytes) -> bool:
    """Does ``tag`` sign ``parts`` under ``secret`` (never, without a secret)?"""
    return secret is not None and hmac.compare_digest(tag, mac(secret, *parts))
