"""Files the embedded backend reads are untrusted: prompt KV states, the model path, the
Ollama store, the GGUF's chat template (issue 24, B4 runtimes, B5, B12, B13, B15)."""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from array import array
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from structgen.backends.local.llamacpp_runtime import render_chat_template
from structgen.backends.local.models import ollama_model_path, resolve_gguf
from structgen.backends.local.prefix_store import _HEAD, MAGIC, PrefixStore
from structgen.errors import BackendError, BackendUnavailable

from .test_llamacpp import gen, make
from .test_local import SYSTEM, LongNames


def _finishes(fn: Callable[[], Any], timeout_s: float = 10.0) -> Any:
    """``fn()``'s result; fails (instead of hanging the run) if it blocks."""
    out: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        pytest.fail(f"{fn} blocked for {timeout_s} s")
    if errors:
        raise errors[0]
    return out[0]


# Prompt KV store ------------------------------------------------------------------------
def test_relabelled_state_with_a_valid_sha256_is_refused(tmp_path: Path) -> None:
    """Prompt A's state written under prompt B's tokens, with the digest recomputed (it had
    no key): B's answer would have come from A's context. The MAC needs the secret."""
    store = PrefixStore(tmp_path, limit_bytes=1 << 20)
    prompt_a, prompt_b = tuple(range(100)), tuple(range(1, 101))
    store.write(prompt_a, b"STATE OF A" * 10)
    rest = array("i", prompt_b).tobytes() + b"STATE OF A" * 10
    forged = tmp_path / "forged.kv"
    forged.write_bytes(_HEAD.pack(MAGIC, hashlib.sha256(rest).digest(), len(prompt_b)) + rest)
    later = PrefixStore(tmp_path, limit_bytes=1 << 20)
    assert later.best([*prompt_b, 7])[0] == prompt_b
    assert later.read(prompt_b) is None and not forged.exists()
    assert later.read(prompt_a) == b"STATE OF A" * 10  # the genuine one still reads
    assert (tmp_path / ".secret").stat().st_mode & 0o777 == 0o600


def test_a_fifo_in_the_store_does_not_block_loading(tmp_path: Path) -> None:
    store = PrefixStore(tmp_path, limit_bytes=1 << 20)
    store.write(tuple(range(100)), b"s" * 100)
    os.mkfifo(tmp_path / "trap.kv")
    later = _finishes(lambda: PrefixStore(tmp_path, limit_bytes=1 << 20))
    assert list(later.index) == [tuple(range(100))]


def test_a_state_llama_cpp_refuses_is_deleted(tiny_gguf: Path, tmp_path: Path,
                                              caplog: pytest.LogCaptureFixture) -> None:
    system = SYSTEM * 3
    ask = [{"role": "system", "content": system}, {"role": "user", "content": "Fix db.py"}]
    other = [{"role": "system", "content": system}, {"role": "user", "content": "Why?"}]
    disk = {"prefix_cache_disk_mb": 64, "prefix_cache_dir": str(tmp_path)}
    eng, first = make(tiny_gguf, **disk)
    expected = gen(eng, first, LongNames, other).text
    gen(eng, first, LongNames, ask)
    store = first.runtime(None).store
    assert store is not None
    store.flush()
    for key, path in list(store.index.items()):  # signed, but half a state: llama.cpp refuses
        state = store.read(key)
        assert state is not None
        store._forget(key, path)
        store.write(key, state[: len(state) // 2])
    first.shutdown()
    eng2, later = make(tiny_gguf, **disk)
    result = gen(eng2, later, LongNames, other)
    assert result.text == expected and "prefix_disk_hit_tokens" in result.stats
    assert result.stats["prefill_tokens"] == result.prompt_tokens  # restored nothing
    assert "llama.cpp refused the state" in caplog.text
    # the refused file was deleted, and the prompt's state written again, whole: the next
    # process restores it (the old store handed the refused file over every time)
    store = later.runtime(None).store
    assert store is not None
    store.flush()
    later.shutdown()
    eng3, third = make(tiny_gguf, **disk)
    again = gen(eng3, third, LongNames, other)
    assert again.text == expected and again.stats["prefill_tokens"] < again.prompt_tokens / 4
    third.shutdown()


def test_spellings_of_one_model_share_a_runtime(tiny_gguf: Path, tmp_path: Path) -> None:
    link = tmp_path / "alias.gguf"
    link.symlink_to(tiny_gguf)
    _, backend = make(tiny_gguf)
    assert backend.runtime(str(link)) is backend.runtime(None)
    assert backend.runtime(str(tiny_gguf.parent / "." / tiny_gguf.name)) is backend.runtime(None)
    assert len(backend._runtimes) == 1
    backend.shutdown()


# Model path and Ollama store ------------------------------------------------------------
def test_model_path_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    with pytest.raises(BackendUnavailable, match="not a regular file"):
        _finishes(lambda: resolve_gguf(str(fifo)))


def test_errors_do_not_quote_file_content(tmp_path: Path) -> None:
    private = tmp_path / "shadow.gguf"
    private.write_text("root:$6$hash-of-the-root-password:19000:0:99999:7:::\n")
    with pytest.raises(BackendUnavailable) as info:
        resolve_gguf(str(private))
    assert "root" not in str(info.value).replace(str(tmp_path), "")


def _manifest(store: Path, name: str, text: str) -> Path:
    path = store / "manifests" / "registry.ollama.ai" / "library" / name / "latest"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return path


def test_deeply_nested_manifest_is_a_typed_error(tmp_path: Path) -> None:
    _manifest(tmp_path, "deep", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(BackendUnavailable, match="nests too deeply"):
        ollama_model_path("deep", tmp_path)
    _manifest(tmp_path, "notjson", "root:x:0:0:secret-line\n")
    with pytest.raises(BackendUnavailable) as info:
        ollama_model_path("notjson", tmp_path)
    assert "secret-line" not in str(info.value) and "root:x" not in str(info.value)


def test_store_links_leading_outside_are_not_followed(tmp_path: Path) -> None:
    store = tmp_path / "store"
    outside = tmp_path / "outside.txt"
    outside.write_text("root:x:0:0:secret\n")
    digest = "ab" * 32
    (store / "blobs").mkdir(parents=True)
    (store / "blobs" / f"sha256-{digest}").symlink_to(outside)
    _manifest(store, "linked", json.dumps({"layers": [{
        "mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{digest}"}]}))
    with pytest.raises(BackendUnavailable, match="outside the Ollama store"):
        ollama_model_path("linked", store)
    manifest = store / "manifests" / "registry.ollama.ai" / "library" / "evil" / "latest"
    manifest.parent.mkdir(parents=True)
    manifest.symlink_to(outside)
    with pytest.raises(BackendUnavailable, match="outside the Ollama store") as info:
        ollama_model_path("evil", store)
    assert "secret" not in str(info.value)


def test_router_health_with_a_nested_manifest_is_false_not_an_exception(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    from structgen.backends.local import LocalBackend
    from structgen.config import Config

    _manifest(tmp_path, "deep", "[" * 100_000 + "]" * 100_000)
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path))
    config = Config()
    config.local.model = "ollama:deep"
    assert asyncio.run(LocalBackend(config).health()) is False


# Chat template -------------------------------------------------------------------------
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("template", [
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
    "{{ 'x' * 1000000000 }}",
    "{% for i in range(100000) %}{{ 'y' * 100 }}{% endfor %}",
    "{{ 10 ** 100000000 }}",
])
def test_hostile_chat_template_fails_fast(template: str) -> None:
    start = time.monotonic()
    with pytest.raises(BackendError, match="chat template failed"):
        _finishes(lambda: render_chat_template(template, MESSAGES, "", ""), timeout_s=30)
    assert time.monotonic() - start < 30


def test_ordinary_chat_template_still_renders() -> None:
    template = ("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}\n{% endfor %}"
                "{% for i in range(3) %}{{ i }}{% endfor %}"
                "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    assert render_chat_template(template, MESSAGES, "", "") == "<|user|>hi\n012<|assistant|>"
