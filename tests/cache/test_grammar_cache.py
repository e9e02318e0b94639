"""Compiled-grammar cache with real xgrammar / llguidance compiles on a real tokenizer."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from structgen.config import CacheConfig
from structgen.constrain.grammar_cache import (
    DISK_FORMAT_VERSION,
    Codec,
    GrammarCache,
    GrammarCompileTimeout,
    default_grammar_cache,
    default_grammar_dir,
    text_codec,
    tokenizer_hash,
    xgrammar_codec,
)

SCHEMA = {"type": "object", "properties": {"kind": {"enum": ["a", "b"]},
                                           "n": {"type": "integer"}},
          "required": ["kind", "n"], "additionalProperties": False}
VALID, INVALID = '{"kind":"a","n":12}', '{"kind":"c","n":12}'


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def xgr(tokenizer: Any) -> Any:
    import xgrammar

    info = xgrammar.TokenizerInfo.from_huggingface(tokenizer)
    # xgrammar's own cache off, so every compile_fn call really compiles
    return info, xgrammar.GrammarCompiler(info, cache_enabled=False)


def xgr_key(tokenizer: Any, schema: dict[str, Any] = SCHEMA) -> tuple[str, str, str, str]:
    import importlib.metadata

    return (json.dumps(schema, sort_keys=True), tokenizer_hash(tokenizer), "xgrammar",
            importlib.metadata.version("xgrammar"))


def accepts(compiled: Any, text: str) -> bool:
    import xgrammar

    m = xgrammar.GrammarMatcher(compiled)
    return bool(m.accept_string(text)) and bool(m.is_completed())


def test_xgrammar_memory_then_disk_after_restart(tmp_path: Path, tokenizer: Any, xgr: Any
                                                 ) -> None:
    info, compiler = xgr
    calls = []

    def compile_fn() -> Any:
        calls.append(1)
        return compiler.compile_json_schema(json.dumps(SCHEMA))

    key = xgr_key(tokenizer)
    c1 = GrammarCache(directory=tmp_path)
    g1 = c1.get_or_compile(key, compile_fn, codec=xgrammar_codec(info))
    assert c1.get_or_compile(key, compile_fn, codec=xgrammar_codec(info)) is g1
    assert len(calls) == 1 and c1.stats()["hits"] == 1 and c1.stats()["misses"] == 1
    assert len(list(tmp_path.rglob("*.json"))) == 1

    c2 = GrammarCache(directory=tmp_path)  # a new process: nothing in memory
    g2 = c2.get_or_compile(key, compile_fn, codec=xgrammar_codec(info))
    assert len(calls) == 1 and c2.disk_hits == 1
    assert g2.serialize_json() == g1.serialize_json()
    assert accepts(g2, VALID)
    assert not accepts(g2, INVALID)


def test_llguidance_grammar_string_cached_on_disk(tmp_path: Path, tokenizer: Any) -> None:
    import llguidance
    import llguidance.hf

    ll = llguidance.hf.from_tokenizer(tokenizer)
    calls = []

    def compile_fn() -> str:
        calls.append(1)
        grammar = llguidance.LLMatcher.grammar_from_json_schema(SCHEMA)
        assert llguidance.LLMatcher.validate_grammar(grammar, ll) == ""
        return grammar

    key = ("s", tokenizer_hash(tokenizer), "llguidance", llguidance.get_version())
    g1 = GrammarCache(directory=tmp_path).get_or_compile(key, compile_fn, codec=text_codec())
    g2 = GrammarCache(directory=tmp_path).get_or_compile(key, compile_fn, codec=text_codec())
    assert g1 == g2 and len(calls) == 1
    matcher = llguidance.LLMatcher(ll, g2)
    assert not matcher.is_error()
    assert matcher.consume_tokens(tokenizer.encode(VALID)) and matcher.is_accepting()


def test_corrupt_or_stale_disk_entry_recompiles(tmp_path: Path, tokenizer: Any, xgr: Any
                                                ) -> None:
    info, compiler = xgr
    key = xgr_key(tokenizer)
    calls = []

    def compile_fn() -> Any:
        calls.append(1)
        return compiler.compile_json_schema(json.dumps(SCHEMA))

    GrammarCache(directory=tmp_path).get_or_compile(key, compile_fn, codec=xgrammar_codec(info))
    (path,) = tmp_path.rglob("*.json")
    for damage in (lambda t: t[: len(t) // 2], lambda t: t.replace('"mac": "', '"mac": "0')):
        text = path.read_text()
        assert damage(text) != text
        path.write_text(damage(text))
        g = GrammarCache(directory=tmp_path).get_or_compile(key, compile_fn,
                                                            codec=xgrammar_codec(info))
        assert accepts(g, VALID)
    assert len(calls) == 3
    # a serialized grammar bound to another tokenizer is refused by xgrammar itself
    import xgrammar

    other = xgrammar.TokenizerInfo(["a", "b", "c"])
    g = GrammarCache(directory=tmp_path).get_or_compile(
        key, lambda: xgrammar.GrammarCompiler(other).compile_json_schema(json.dumps(SCHEMA)),
        codec=xgrammar_codec(other))
    assert g.tokenizer_info.vocab_size == 3


def test_real_compile_past_deadline_then_cached_when_it_finishes(tmp_path: Path,
                                                                 tokenizer: Any, xgr: Any
                                                                 ) -> None:
    info, compiler = xgr
    key = xgr_key(tokenizer, {**SCHEMA, "title": "deadline"})
    calls = []
    gave_up = threading.Event()

    def compile_fn() -> Any:
        calls.append(1)
        # the real compile, once the caller has given up: however the threads are
        # scheduled, it cannot finish before the deadline
        gave_up.wait(60)
        return compiler.compile_json_schema(json.dumps(SCHEMA))

    cache = GrammarCache(directory=tmp_path)
    try:
        with pytest.raises(GrammarCompileTimeout) as err:
            cache.get_or_compile(key, compile_fn, timeout_s=0.01, codec=xgrammar_codec(info))
    finally:
        gave_up.set()
    assert err.value.key == key and not err.value.recorded
    deadline = time.monotonic() + 30
    while cache.timed_out(key) is not None or key not in cache._mem:
        assert time.monotonic() < deadline, "the background compile never landed"
        time.sleep(0.01)
    g = cache.get_or_compile(key, compile_fn, timeout_s=1e-6, codec=xgrammar_codec(info))
    assert accepts(g, VALID) and len(calls) == 1


def test_hanging_compile_is_recorded_and_not_retried(tmp_path: Path) -> None:
    release = threading.Event()
    calls = []

    def never_finishes() -> str:
        calls.append(1)
        release.wait(30)
        return "grammar"

    key = ("h", "t", "llguidance", "1")
    try:
        with pytest.raises(GrammarCompileTimeout):
            GrammarCache(directory=tmp_path).get_or_compile(key, never_finishes, timeout_s=0.05,
                                                           codec=text_codec())
        restarted = GrammarCache(directory=tmp_path)
        assert restarted.timed_out(key) == 0.05
        with pytest.raises(GrammarCompileTimeout) as err:
            restarted.get_or_compile(key, never_finishes, timeout_s=0.05, codec=text_codec())
        assert err.value.recorded and len(calls) == 1  # failed fast, no second compile
        with pytest.raises(GrammarCompileTimeout):  # a longer deadline earns one retry
            restarted.get_or_compile(key, never_finishes, timeout_s=0.1, codec=text_codec())
        assert len(calls) == 2 and restarted.timed_out(key) == 0.1
    finally:
        release.set()


def test_concurrent_callers_share_one_compile(tmp_path: Path, tokenizer: Any, xgr: Any) -> None:
    info, compiler = xgr
    calls = []

    def compile_fn() -> Any:
        calls.append(1)
        time.sleep(0.05)  # keep the compile in flight while the others arrive
        return compiler.compile_json_schema(json.dumps(SCHEMA))

    cache = GrammarCache(directory=tmp_path)
    key = xgr_key(tokenizer, {**SCHEMA, "title": "shared"})
    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(
        cache.get_or_compile(key, compile_fn, timeout_s=10, codec=xgrammar_codec(info))))
        for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(results) == 6 and all(r is results[0] for r in results)


def test_compile_error_propagates_and_is_not_cached(tmp_path: Path, xgr: Any) -> None:
    _, compiler = xgr
    cache = GrammarCache(directory=tmp_path)
    key = ("bad", "t", "xgrammar", "x")
    for _ in range(2):
        with pytest.raises(RuntimeError):
            cache.get_or_compile(key, lambda: compiler.compile_json_schema('{"type": 12}'),
                                 timeout_s=10)
    assert cache.stats()["misses"] == 2 and key not in cache._mem


def test_lru_bound(tmp_path: Path) -> None:
    cache = GrammarCache(max_entries=3)
    for i in range(5):
        cache.get_or_compile((str(i), "t", "e", "v"), lambda i=i: f"g{i}")
    assert list(cache._mem) == [(str(i), "t", "e", "v") for i in (2, 3, 4)]


def test_tokenizer_hash(tokenizer: Any, tiny_model_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    from structgen.tools.testing import build_tiny_model

    again = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert tokenizer_hash(again) == tokenizer_hash(tokenizer)
    other = AutoTokenizer.from_pretrained(build_tiny_model(tmp_path / "m", vocab_size=520))
    assert tokenizer_hash(other) != tokenizer_hash(tokenizer)


def test_default_cache_follows_config(tmp_path: Path) -> None:
    a = default_grammar_cache(CacheConfig(grammar_dir=str(tmp_path / "a")))
    assert a is default_grammar_cache(CacheConfig(grammar_dir=str(tmp_path / "a")))
    assert a is not default_grammar_cache(CacheConfig(grammar_dir=str(tmp_path / "b")))
    assert a.directory == tmp_path / "a"


# Through the embedded backend's constraint engines (what a request really goes through) ----
def _constraint(tiny_model_dir: Path, cache: GrammarCache, timeout_s: float | None = None
                ) -> Any:
    from transformers import AutoTokenizer

    from structgen.constrain.base import TokenizerData, create_constraint

    hf = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok = TokenizerData(hf, len(hf), (hf.eos_token_id,))
    return create_constraint("xgrammar", tok, grammar_cache=cache, compile_timeout_s=timeout_s)


def test_embedded_xgrammar_grammar_survives_a_restart(tmp_path: Path,
                                                      tiny_model_dir: Path) -> None:
    from structgen.constrain.base import ConstraintOptions
    from structgen.schema import compile_output

    output = compile_output({**SCHEMA, "properties": {**SCHEMA["properties"], "n": {
        "type": "integer", "multipleOf": 3}}})
    first = _constraint(tiny_model_dir, GrammarCache(directory=tmp_path))
    m1 = first.matcher(output, ConstraintOptions())
    assert [str(e) for e in m1.post_enforced] == ["/properties/n/multipleOf"]
    assert list((tmp_path / "xgrammar").glob("*.json"))  # written to disk
    # a new process: new cache object, new engine, same directory
    restarted = GrammarCache(directory=tmp_path)
    again = _constraint(tiny_model_dir, restarted)
    m2 = again.matcher(output, ConstraintOptions())
    assert restarted.disk_hits == 1 and restarted.misses == 0
    assert m2.post_enforced == m1.post_enforced  # the report survives too, reasons and all
    assert [e.reason for e in m2.post_enforced] == [e.reason for e in m1.post_enforced]
    for m in (m1, m2):
        assert m.m.accept_string('{"kind":"a","n":12}') and m.is_accepting()


def test_embedded_compile_timeout_falls_back_to_plain_json(tmp_path: Path,
                                                           tiny_model_dir: Path) -> None:
    from structgen.constrain.base import ConstraintOptions
    from structgen.schema import compile_output

    # a schema no other test compiled: XGrammar keeps compiled grammars in memory, and one
    # compiled earlier in this process comes back within any deadline
    output = compile_output({**SCHEMA, "description": f"timeout test {tmp_path.name}"})
    cache = GrammarCache(directory=tmp_path)
    engine = _constraint(tiny_model_dir, cache, timeout_s=0.01)
    real = engine.compile
    gave_up = threading.Event()

    def slow_compile(out: Any, options: Any) -> Any:
        # the real compile of the full schema, once the matcher has fallen back: however
        # the threads are scheduled, it cannot beat the deadline
        if out.json_schema.get("description") == output.json_schema["description"]:
            gave_up.wait(60)
        return real(out, options)

    engine.compile = slow_compile
    try:
        m = engine.matcher(output, ConstraintOptions())
    finally:
        gave_up.set()
    assert [(str(e), e.reason) for e in m.post_enforced] == [("/", "compile-timeout: type-only")]
    assert cache.timeouts == 1
    # plain JSON of the schema's type: any object, so validation has the last word
    assert m.m.accept_string('{"other":true}') and m.is_accepting()
    # a new process compiles nothing: the timeout is on record (so the fallback grammar is
    # read from disk), unless the first compile finished in the background meanwhile and
    # stored the full grammar, which is then read instead
    restarted = GrammarCache(directory=tmp_path)
    engine2 = _constraint(tiny_model_dir, restarted, timeout_s=1e-6)
    assert [str(e) for e in engine2.matcher(output, ConstraintOptions()).post_enforced] in (
        ["/"], [])
    assert restarted.misses == 0 and restarted.disk_hits == 1


def test_only_slow_compiles_go_to_disk_and_off_the_request_path(tmp_path: Path) -> None:
    """The backend's cache writes a grammar only when a disk read can beat recompiling, and
    in the background: XGrammar's serialized form runs to hundreds of MB."""
    cache = GrammarCache(directory=tmp_path, disk_min_compile_s=0.3, background_writes=True)
    fast = cache.get_or_compile(("fast", "t", "e", "1"), lambda: "g-fast", codec=text_codec())

    def slow() -> str:
        time.sleep(0.4)
        return "g-slow"

    assert fast == "g-fast"
    assert cache.get_or_compile(("slow", "t", "e", "1"), slow, codec=text_codec()) == "g-slow"
    cache.flush()
    assert len(list(tmp_path.rglob("*.json"))) == 1  # the slow one only
    restarted = GrammarCache(directory=tmp_path)
    assert restarted.get_or_compile(("slow", "t", "e", "1"), lambda: "recompiled",
                                    codec=text_codec()) == "g-slow"
    assert restarted.disk_hits == 1
    backend_cache = default_grammar_cache(CacheConfig(grammar_dir=str(tmp_path / "b")))
    assert backend_cache.background_writes and backend_cache.disk_min_compile_s >= 1.0


def test_llguidance_compiles_inline_without_the_deadline_thread(tmp_path: Path,
                                                                tiny_model_dir: Path) -> None:
    """llguidance caps its own compile work, so a deadline no compile could meet does not
    apply to it: the grammar compiles in the caller's thread and nothing is recorded."""
    from transformers import AutoTokenizer

    from structgen.constrain.base import ConstraintOptions, TokenizerData, create_constraint
    from structgen.schema import compile_output

    hf = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok = TokenizerData(hf, len(hf), (hf.eos_token_id,))
    cache = GrammarCache(directory=tmp_path)
    engine = create_constraint("llguidance", tok, grammar_cache=cache, compile_timeout_s=1e-9)
    # no thread started (idle workers of earlier tests may exit meanwhile: a count of
    # threads could drop, so the threads themselves are compared)
    before = set(threading.enumerate())
    m = engine.matcher(compile_output(SCHEMA), ConstraintOptions())
    assert m.post_enforced == () and cache.timeouts == 0 and cache.misses == 1
    assert set(threading.enumerate()) - before == set()
    assert not list(tmp_path.rglob("*.timeout"))
    for token in hf.encode(VALID, add_special_tokens=False):
        assert m.consume(token)
    assert m.is_accepting()


def test_compile_workers_are_reused_and_a_hung_compile_blocks_nothing() -> None:
    from structgen.constrain.grammar_cache import _Workers

    workers = _Workers(idle_s=5)
    names: list[str] = []

    def record() -> None:
        names.append(threading.current_thread().name + str(threading.get_ident()))

    for _ in range(20):  # one after the other: one thread serves them all
        done = threading.Event()
        workers.submit(lambda done=done: (record(), done.set()))
        assert done.wait(60)
        # the job ran, but its worker is idle again only a moment later; submitting in
        # between starts a second thread (correctly): wait until it is idle
        _wait_until(lambda: workers._idle == 1, "the worker never went idle")
    assert len(set(names)) == 1
    release, started = threading.Event(), threading.Event()
    workers.submit(lambda: (started.set(), release.wait(60)))
    assert started.wait(60)
    done = threading.Event()
    workers.submit(done.set)  # the only worker is stuck: a new one takes this job
    assert done.wait(60)
    release.set()


def _wait_until(check: Any, what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.001)


def test_compile_workers_after_fork_start_fresh() -> None:
    """A forked child has none of the parent's worker threads; its pool must not count on
    them (a job handed to a thread that does not exist would wait forever)."""
    import os

    import structgen.constrain.grammar_cache as gc

    done = threading.Event()
    gc._COMPILE_WORKERS.submit(done.set)
    assert done.wait(60)
    # the parent's pool counts on an idle worker, which the child does not have
    _wait_until(lambda: gc._COMPILE_WORKERS._idle > 0, "the worker never went idle")
    pid = os.fork()
    if pid == 0:  # child: a compile with a deadline must still run
        code = 1
        try:
            cache = GrammarCache()
            code = 0 if cache.get_or_compile(("k", "t", "e", "1"), lambda: "g",
                                             timeout_s=60) == "g" else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_compile_ending_at_the_deadline_leaves_no_stale_timeout_record(tmp_path: Path) -> None:
    """Compiles that end right around their deadline: whichever side wins, once the grammar
    is cached no timeout record may stay behind (it would make every later call with that
    deadline give up at once, and a restarted process skip a grammar that compiles)."""
    cache = GrammarCache(directory=tmp_path)

    def compile_fn() -> str:
        time.sleep(0.002)
        return "grammar"

    keys = [(f"edge-{i}", "t", "e", "1") for i in range(60)]
    for key in keys:
        with contextlib.suppress(GrammarCompileTimeout):
            cache.get_or_compile(key, compile_fn, timeout_s=0.002, codec=text_codec())
    deadline = time.monotonic() + 120
    for key in keys:
        while key not in cache._mem or cache.timed_out(key) is not None:
            assert time.monotonic() < deadline, f"{key[0]}: stale timeout record"
            time.sleep(0.005)


def test_a_compile_failing_after_its_caller_gave_up_does_not_block_the_key(tmp_path: Path
                                                                          ) -> None:
    cache = GrammarCache(directory=tmp_path)
    key = ("fails-late", "t", "e", "1")

    def fails_late() -> str:
        time.sleep(0.05)
        raise ValueError("engine refused it")

    with pytest.raises(GrammarCompileTimeout):
        cache.get_or_compile(key, fails_late, timeout_s=0.01, codec=text_codec())
    deadline = time.monotonic() + 60
    while key in cache._inflight:  # the failed compile frees its slot when it ends
        assert time.monotonic() < deadline, "the in-flight slot was never freed"
        time.sleep(0.01)
    # a longer deadline earns a new try, which compiles
    assert cache.get_or_compile(key, lambda: "grammar", timeout_s=60, codec=text_codec()) \
        == "grammar"


def _forge(cache: GrammarCache, key: tuple[str, str, str, str], payload: str,
           **fields: Any) -> Path:
    """Write a disk entry as someone without the directory's secret could."""
    import hashlib

    path = cache._path(key, ".json")
    assert path is not None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"v": DISK_FORMAT_VERSION, "key": list(key), "created_at": 0,
                                "sha256": hashlib.sha256(payload.encode()).hexdigest(),
                                "payload": payload, **fields}))
    return path


def test_forged_disk_entry_is_rejected_and_recompiled(tmp_path: Path) -> None:
    """A file with the right name, key and unkeyed hash, but no valid MAC, never reaches
    the codec: it is deleted and the grammar compiled again."""
    import hashlib
    import hmac

    key = ("schema", "tok", "llguidance", "1")
    compiled: list[int] = []

    def compile_fn() -> str:
        compiled.append(1)
        return "GENUINE"

    genuine = GrammarCache(directory=tmp_path)
    assert genuine.get_or_compile(key, compile_fn, codec=text_codec()) == "GENUINE"
    # a restart reads the genuine, MAC'd entry back without compiling
    assert GrammarCache(directory=tmp_path).get_or_compile(
        key, compile_fn, codec=text_codec()) == "GENUINE" and len(compiled) == 1
    loaded: list[str] = []

    def load(text: str) -> str:
        loaded.append(text)
        return text

    codec = Codec(dumps=lambda s: s, loads=load)
    wrong_secret = hmac.new(b"x" * 32, json.dumps([list(key), "FORGED"]).encode(),
                            hashlib.sha256).hexdigest()
    for extra in ({}, {"mac": wrong_secret}, {"mac": None}):
        path = _forge(genuine, key, "FORGED", **extra)
        restarted = GrammarCache(directory=tmp_path)
        assert restarted.get_or_compile(key, compile_fn, codec=codec) == "GENUINE"
        assert "FORGED" not in loaded and restarted.disk_hits == 0
        assert "FORGED" not in path.read_text()  # replaced by a freshly compiled entry
    assert len(compiled) == 4
    secret = tmp_path / ".secret"
    assert secret.stat().st_mode & 0o777 == 0o600


def test_forged_timeout_record_does_not_block_compiles(tmp_path: Path) -> None:
    key = ("schema", "tok", "xgrammar", "1")
    cache = GrammarCache(directory=tmp_path)
    record = cache._path(key, ".timeout")
    assert record is not None
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"key": list(key), "timeout_s": 1e9, "at": 0}))
    assert cache.timed_out(key) is None and not record.exists()
    assert cache.get_or_compile(key, lambda: "ok", timeout_s=60) == "ok"


def test_grammar_dir_expands_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_grammar_dir(CacheConfig(grammar_dir="~/grammars")) == tmp_path / "grammars"


def test_a_compile_that_missed_its_deadline_is_stored_before_its_record_goes(
        tmp_path: Path) -> None:
    """A compile that ends after its caller gave up used to remove the timeout record first
    and write the grammar after (in the background, and only when slower than
    ``disk_min_compile_s``): a process reading in between, or ever for a grammar under
    that bound, found neither and compiled again (a CI failure of
    test_embedded_compile_timeout_falls_back_to_plain_json). Now a grammar that missed a
    deadline always goes to disk, and before its record goes."""
    key = ("late", "t", "e", "1")
    cache = GrammarCache(directory=tmp_path, disk_min_compile_s=3600, background_writes=True)
    go, writing, release = threading.Event(), threading.Event(), threading.Event()
    real_write = cache._write_disk

    def held_write(*args: Any) -> None:
        writing.set()
        release.wait(60)
        real_write(*args)

    def compile_fn() -> str:
        go.wait(60)
        return "g-late"

    cache._write_disk = held_write  # type: ignore[method-assign]
    with pytest.raises(GrammarCompileTimeout):
        cache.get_or_compile(key, compile_fn, timeout_s=0.01, codec=text_codec())
    go.set()
    assert writing.wait(10), "the late grammar was not stored"
    # while it is being written, another process still sees the record (not: nothing)
    assert GrammarCache(directory=tmp_path).timed_out(key) is not None
    release.set()
    for _ in range(6000):  # the record goes once the grammar is on disk
        if GrammarCache(directory=tmp_path).timed_out(key) is None:
            break
        time.sleep(0.01)
    restarted = GrammarCache(directory=tmp_path)
    assert restarted.get_or_compile(key, lambda: pytest.fail("compiled again"),
                                    timeout_s=0.01, codec=text_codec()) == "g-late"
    assert restarted.disk_hits == 1 and restarted.misses == 0
