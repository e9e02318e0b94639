"""The result cache, against both stores (diskcache and a real redis-server)."""

from __future__ import annotations

import enum
import json
import time
from collections.abc import AsyncIterator, Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field, SecretStr, field_serializer, field_validator

from structgen.backends import BackendBase, Capabilities, GenerationRequest, GenerationResult
from structgen.cache import ENTRY_PREFIX, ResultCache, entry_mac, open_result_cache
from structgen.config import CacheConfig, Config
from structgen.engine import Engine
from structgen.types import Choice, Regex, StructuredResult


class Person(BaseModel):
    name: str
    age: int


# Same JSON Schema as Person (so the same key; no docstring, it would become a
# "description"), but its validator rejects minors.
class StrictPerson(BaseModel):
    name: str
    age: int

    @field_validator("age")
    @classmethod
    def adult(cls, v: int) -> int:
        if v < 18:
            raise ValueError("must be an adult")
        return v

    model_config = {"title": "Person"}


SCHEMA = {"type": "object", "properties": {"id": {"type": "integer"},
                                           "tags": {"type": "array", "items": {"type": "string"}}},
          "required": ["id", "tags"], "additionalProperties": False}


class CountingBackend(BackendBase):
    """A backend that answers with fixed text and counts calls (a stand-in for a model)."""

    name = "local"

    def __init__(self, text: str) -> None:
        self.text = text
        self.calls = 0

    def capabilities(self) -> Capabilities:
        return Capabilities(output_kinds=frozenset({"json", "regex", "choice", "grammar"}))

    async def agenerate(self, request: GenerationRequest) -> GenerationResult:
        self.calls += 1
        return GenerationResult(text=self.text, backend=self.name, model="counting-model")

    async def stream(self, request: GenerationRequest) -> AsyncIterator[str]:
        yield self.text

    async def health(self) -> bool:
        return True


def put_value(cache: ResultCache, engine_cfg: Config, prompt: str, output: Any, value: Any,
              text: str) -> tuple[str, GenerationRequest]:
    req = Engine(engine_cfg, backends={"local": CountingBackend(text)}).build_request(
        prompt, output)
    key = cache.key(req)
    cache.put(key, req, StructuredResult(value=value, raw_text=text, backend="local",
                                         model="m-1"))
    return key, req


def test_round_trip_pydantic(cache: ResultCache, app_config: Config) -> None:
    p = Person(name="Ada", age=36)
    key, req = put_value(cache, app_config, "who?", Person, p, p.model_dump_json())
    hit = cache.get(key, req.output)  # type: ignore[arg-type]
    assert hit is not None and hit.cached and hit.cache_key == key
    assert isinstance(hit.value, Person) and hit.value == p
    assert (hit.backend, hit.model, hit.raw_text) == ("local", "m-1", p.model_dump_json())
    assert (cache.hits, cache.misses) == (1, 0)


@pytest.mark.parametrize(("output", "value"), [
    (SCHEMA, {"id": 3, "tags": ["a", "ü"]}),
    (Regex(r"[a-z]+-\d+"), "abc-12"),
    (Choice(["yes", "no"]), "no"),
])
def test_round_trip_other_outputs(cache: ResultCache, app_config: Config, output: Any,
                                  value: Any) -> None:
    text = json.dumps(value) if isinstance(value, dict) else value
    key, req = put_value(cache, app_config, "q", output, value, text)
    hit = cache.get(key, req.output)  # type: ignore[arg-type]
    assert hit is not None and hit.value == value


def test_entry_records_metadata(cache: ResultCache, app_config: Config) -> None:
    key, req = put_value(cache, app_config, "q", SCHEMA, {"id": 1, "tags": []}, '{"id":1,"tags":[]}')
    raw = cache.store.get(ENTRY_PREFIX + key)
    assert raw is not None
    entry = cache.decode(raw)
    assert entry is not None
    assert entry["backend"] == "local" and entry["model"] == "m-1" and entry["key"] == key
    assert abs(entry["created_at"] - time.time()) < 60 and entry["ttl_s"] is None
    assert entry["schema"] == req.output.hash  # type: ignore[union-attr]
    json.loads(raw[64:])  # the body is plain JSON: nothing pickled


def test_miss_and_counters_persist(cache_config: CacheConfig, app_config: Config) -> None:
    c1 = open_result_cache(cache_config)
    assert isinstance(c1, ResultCache)
    key, req = put_value(c1, app_config, "q", Person, Person(name="a", age=1),
                         '{"name":"a","age":1}')
    assert c1.get("0" * 64, req.output) is None  # type: ignore[arg-type]
    for _ in range(3):
        assert c1.get(key, req.output) is not None  # type: ignore[arg-type]
    c1.close()  # flushes the buffered counters
    c2 = open_result_cache(cache_config)
    assert isinstance(c2, ResultCache)
    stats = c2.stats()
    assert (stats["entries"], stats["hits"], stats["misses"]) == (1, 3, 1)
    assert stats["bytes"] > 0
    c2.close()


def test_ttl_expires(cache_config: CacheConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    # A clock of the test's own (entries and diskcache read time.time()): with a real one
    # and a short TTL, a put and a get more than the TTL apart on a loaded machine missed.
    # Redis expires entries on its own clock: the TTL is long for it; its PX is checked
    # in test_redis.py.
    now = [time.time()]
    monkeypatch.setattr(time, "time", lambda: now[0])
    cfg = cache_config.model_copy(update={"ttl_s": 60})
    cache = open_result_cache(cfg)
    assert isinstance(cache, ResultCache)
    key, req = put_value(cache, Config(cache=cfg), "q", Choice(["a", "b"]), "a", "a")
    now[0] += 59
    assert cache.get(key, req.output) is not None  # type: ignore[arg-type]
    now[0] += 2
    assert cache.get(key, req.output) is None  # type: ignore[arg-type]
    cache.close()


def test_cacheable_policy(cache_config: CacheConfig) -> None:
    engine = Engine(Config(cache=cache_config), backends={"local": CountingBackend("a")})
    out = Choice(["a", "b"])

    def cacheable(cache_sampled: bool = False, **s: Any) -> bool:
        engine.cache.config = cache_config.model_copy(update={"cache_sampled": cache_sampled})
        return bool(engine.cache.cacheable(engine.build_request("q", out, **s)))

    assert cacheable(temperature=0)
    assert not cacheable(temperature=0.7)
    assert cacheable(temperature=0.7, seed=1)
    assert cacheable(cache_sampled=True, temperature=0.7)
    engine.close()


CORRUPTIONS: dict[str, Callable[[str, Callable[[str], str]], str]] = {
    "truncated": lambda raw, sign: raw[: len(raw) // 2],
    "bit flip in body": lambda raw, sign: raw[:80] + chr(ord(raw[80]) ^ 1) + raw[81:],
    "bad checksum": lambda raw, sign: "0" * 64 + raw[64:],
    "empty": lambda raw, sign: "",
    "json without checksum": lambda raw, sign: raw[64:],
    "unkeyed sha256 (the old format)": lambda raw, sign: _with_sha256(raw[64:]),
    "not json, valid mac": lambda raw, sign: sign("{not json"),
    "wrong key inside": lambda raw, sign: sign(raw[64:].replace('"key":"', '"key":"x')),
    "missing fields": lambda raw, sign: sign(json.dumps({"v": 3, "text": "{}"})),
    "deep nesting": lambda raw, sign: sign("[" * 100000 + "]" * 100000),
}


def _with_sha256(body: str) -> str:
    import hashlib

    return hashlib.sha256(body.encode()).hexdigest() + body


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupted_entry_dropped_and_recomputed(cache_config: CacheConfig, kind: str) -> None:
    backend = CountingBackend('{"name":"Ada","age":36}')
    engine = Engine(Config(cache=cache_config), backends={"local": backend})
    first = engine.run("who?", Person, backend="local")
    assert not first.cached and backend.calls == 1
    assert engine.run("who?", Person, backend="local").cached and backend.calls == 1
    store, key = engine.cache.store, ENTRY_PREFIX + str(first.cache_key)
    secret = engine.cache.secret  # type: ignore[union-attr]
    assert secret is not None
    store.set(key, CORRUPTIONS[kind](store.get(key),
                                     lambda body: entry_mac(secret, body) + body), None)

    again = engine.run("who?", Person, backend="local")  # never raises
    assert not again.cached and backend.calls == 2 and again.value == Person(name="Ada", age=36)
    assert engine.cache.dropped == 1
    assert engine.run("who?", Person, backend="local").cached  # the recomputed entry is good
    engine.close()


def test_bytes_that_are_not_utf8(cache_config: CacheConfig, app_config: Config) -> None:
    cache = open_result_cache(cache_config)
    assert isinstance(cache, ResultCache)
    key, req = put_value(cache, app_config, "q", Choice(["a"]), "a", "a")
    if cache_config.backend == "redis":
        import redis

        with redis.Redis.from_url(cache_config.url) as r:
            r.set("structgen:" + ENTRY_PREFIX + key, b"\xff\xfe" * 40)
    else:
        import diskcache

        with diskcache.Cache(cache_config.dir) as raw:
            raw.set(ENTRY_PREFIX + key, b"\xff\xfe" * 40)
    assert cache.get(key, req.output) is None  # type: ignore[arg-type]
    assert cache.store.get(ENTRY_PREFIX + key) is None
    cache.close()


class _Marker:
    """Unpickling this creates a directory: proof that a read ran pickle.loads."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        import os

        return (os.mkdir, (self.path,))


def test_disk_store_never_unpickles(tmp_path: Path) -> None:
    import diskcache

    cfg = CacheConfig(backend="disk", dir=str(tmp_path / "results"))
    cache = open_result_cache(cfg)
    assert isinstance(cache, ResultCache)
    key, req = put_value(cache, Config(cache=cfg), "q", Choice(["a"]), "a", "a")
    marker = tmp_path / "pwned"
    with diskcache.Cache(cfg.dir) as raw:  # the stock Disk pickles non-str values
        raw.set(ENTRY_PREFIX + key, _Marker(str(marker)))
    assert cache.get(key, req.output) is None  # type: ignore[arg-type]
    assert not marker.exists()
    assert list(cache.export()) == []
    assert not marker.exists()
    with pytest.raises(TypeError):
        cache.store._cache.set("x", {"a": 1})  # type: ignore[attr-defined]
    cache.close()


def test_revalidation_rejects_entry_that_no_longer_fits(cache: ResultCache,
                                                        app_config: Config) -> None:
    key, _ = put_value(cache, app_config, "who?", Person, Person(name="Kid", age=9),
                       '{"name":"Kid","age":9}')
    engine = Engine(app_config, backends={"local": CountingBackend("{}")})
    strict = engine.build_request("who?", StrictPerson)
    assert cache.key(strict) == key  # same schema → same key, but the class is stricter now
    assert cache.get(key, strict.output) is None  # type: ignore[arg-type]
    assert cache.dropped == 1 and cache.store.get(ENTRY_PREFIX + key) is None
    engine.close()


def test_forged_data_with_valid_checksum_is_not_returned(cache: ResultCache,
                                                         app_config: Config) -> None:
    key, req = put_value(cache, app_config, "q", SCHEMA, {"id": 1, "tags": []},
                         '{"id":1,"tags":[]}')
    entry = cache.decode(cache.store.get(ENTRY_PREFIX + key))  # type: ignore[arg-type]
    assert entry is not None
    entry["text"] = '{"id":"not an int","tags":[]}'
    cache.put_raw(key, json.dumps(entry))
    assert cache.get(key, req.output) is None  # type: ignore[arg-type]


def test_engine_hit_skips_backend_sync_and_async(cache_config: CacheConfig) -> None:
    import asyncio

    backend = CountingBackend('{"id":7,"tags":["x"]}')
    engine = Engine(Config(cache=cache_config), backends={"local": backend})
    r1 = engine.run("q", SCHEMA, backend="local")
    r2 = asyncio.run(engine.arun("q", SCHEMA, backend="local"))
    r3 = engine.run("q", SCHEMA, backend="local", use_cache=False)
    assert (r1.cached, r2.cached, r3.cached) == (False, True, False)
    assert r1.value == r2.value == {"id": 7, "tags": ["x"]} and backend.calls == 2
    sampled = engine.run("q", SCHEMA, backend="local", temperature=0.9)
    assert not sampled.cached and sampled.cache_key is None
    assert not engine.run("q", SCHEMA, backend="local", temperature=0.9).cached
    assert backend.calls == 4
    engine.close()


def test_export_import_clear(cache_config: CacheConfig, app_config: Config,
                             tmp_path: Path) -> None:
    src = open_result_cache(cache_config)
    assert isinstance(src, ResultCache)
    keys = [put_value(src, app_config, f"q{i}", SCHEMA, {"id": i, "tags": []},
                      json.dumps({"id": i, "tags": []})) for i in range(5)]
    exported = list(src.export())
    assert sorted(e["key"] for e in exported) == sorted(k for k, _ in keys)
    assert src.clear() == 5 and src.stats()["entries"] == 0
    assert all(src.import_entry(e) for e in exported)
    assert not src.import_entry({"v": 2, "key": "k"})  # malformed
    assert not src.import_entry("nonsense")
    for (key, req), i in zip(keys, range(5), strict=True):
        hit = src.get(key, req.output)  # type: ignore[arg-type]
        assert hit is not None and hit.value == {"id": i, "tags": []}
    assert src.stats()["entries"] == 5
    src.close()


def test_store_failure_is_a_miss_not_a_crash(tmp_path: Path) -> None:
    cfg = CacheConfig(backend="disk", dir=str(tmp_path / "results"))
    backend = CountingBackend('{"name":"Ada","age":36}')
    engine = Engine(Config(cache=cfg), backends={"local": backend})
    engine.run("q", Person, backend="local")
    engine.cache.store.close()
    engine.cache.store._cache = None  # type: ignore[attr-defined]  # every call now raises
    assert not engine.run("q", Person, backend="local").cached
    # the failed read counts; the write after it is skipped (the store is left alone a while)
    assert engine.cache.errors >= 1 and backend.calls == 2


# A hit equals the miss (the entry keeps the validated text, not a dump of the value) ------
class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


class Cat(BaseModel):
    kind: Literal["cat"]
    lives: int


class Dog(BaseModel):
    kind: Literal["dog"]
    good: bool


class Aliased(BaseModel):
    user_name: str = Field(alias="userName")


class Serialized(BaseModel):
    score: int

    @field_serializer("score")
    def _tenfold(self, v: int) -> int:  # what model_dump gives is not what was generated
        return v * 10


class Secret(BaseModel):
    token: SecretStr


class Enumerated(BaseModel):
    color: Color


class Dated(BaseModel):
    at: datetime
    day: date


class Pets(BaseModel):
    pet: Cat | Dog = Field(discriminator="kind")


class Everything(BaseModel):
    user_name: str = Field(alias="userName")
    token: SecretStr
    color: Color
    at: datetime
    pet: Cat | Dog = Field(discriminator="kind")
    score: int

    @field_serializer("score")
    def _tenfold(self, v: int) -> int:
        return v * 10


HIT_EQUALS_MISS = [
    (Aliased, '{"userName":"ada"}'),
    (Serialized, '{"score":4}'),
    (Secret, '{"token":"s3cret"}'),
    (Enumerated, '{"color":"blue"}'),
    (Dated, '{"at":"2024-05-01T12:00:00+02:00","day":"2024-05-01"}'),
    (Pets, '{"pet":{"kind":"dog","good":true}}'),
    (Everything, '{"userName":"ada","token":"s3cret","color":"red",'
                 '"at":"2024-05-01T12:00:00Z","pet":{"kind":"cat","lives":9},"score":4}'),
]


@pytest.mark.parametrize(("model", "text"), HIT_EQUALS_MISS,
                         ids=[m.__name__ for m, _ in HIT_EQUALS_MISS])
def test_hit_equals_miss(cache_config: CacheConfig, model: type[BaseModel], text: str) -> None:
    backend = CountingBackend(text)
    engine = Engine(Config(cache=cache_config), backends={"local": backend})
    miss = engine.run("q", model, backend="local")
    hit = engine.run("q", model, backend="local")
    assert not miss.cached and hit.cached and backend.calls == 1
    assert hit.value == miss.value == model.model_validate_json(text)
    assert hit.raw_text == miss.raw_text == text
    if isinstance(hit.value, Secret | Everything):
        assert hit.value.token.get_secret_value() == "s3cret"  # not "**********"
    if isinstance(hit.value, Serialized | Everything):
        assert hit.value.score == 4  # not the serializer's 40
    engine.close()


@pytest.mark.parametrize("where", ["absolute", "dotdot"])
def test_tampered_row_filename_outside_cache_dir_is_refused(tmp_path: Path, where: str) -> None:
    """diskcache keeps large values in files named by the row's ``filename`` column; a
    tampered cache.db pointing it elsewhere must neither read nor delete that file."""
    import sqlite3

    cfg = CacheConfig(backend="disk", dir=str(tmp_path / "results"))
    cache = open_result_cache(cfg)
    assert isinstance(cache, ResultCache)
    big = {"id": 1, "tags": ["x" * 100] * 800}  # > diskcache's 32 KiB: stored in a file
    key, req = put_value(cache, Config(cache=cfg), "q", SCHEMA, big, json.dumps(big))
    assert cache.get(key, req.output) is not None  # type: ignore[arg-type]
    outside = tmp_path / "precious.txt"
    secret = '{"id":2,"tags":["read from outside the cache"]}'
    outside.write_text(secret)
    name = str(outside) if where == "absolute" else "../precious.txt"
    with sqlite3.connect(tmp_path / "results" / "cache.db") as db:
        assert db.execute("UPDATE Cache SET filename = ? WHERE key = ?",
                          (name, ENTRY_PREFIX + key)).rowcount == 1
    assert cache.store.get(ENTRY_PREFIX + key) is None  # refused, not read
    assert cache.get(key, req.output) is None  # type: ignore[arg-type]
    cache.store.delete(ENTRY_PREFIX + key)
    cache.clear()
    assert outside.read_text() == secret  # still there: nothing deleted it
    cache.close()


def test_entries_of_the_previous_version_still_read(cache: ResultCache,
                                                    app_config: Config) -> None:
    """Typed usage/repairs/post_enforced did not change what an entry holds: a body as the
    previous version wrote it (cache format 3, written out here by hand) is a hit, and a
    result with the typed records writes the same members."""
    from structgen.types import Repair, Usage

    engine = Engine(app_config, backends={"local": CountingBackend("{}")})
    req = engine.build_request("old entry", SCHEMA)
    key = cache.key(req)
    old = {"v": 3, "key": key, "created_at": time.time(), "ttl_s": None, "backend": "local",
           "model": "m-0", "kind": "json", "schema": req.output.hash,  # type: ignore[union-attr]
           "repaired": True, "text": '{"id":5,"tags":["a"]}', "passed_over": []}
    cache.put_raw(key, json.dumps(old, separators=(",", ":")))
    hit = cache.get(key, req.output)  # type: ignore[arg-type]
    assert hit is not None and hit.value == {"id": 5, "tags": ["a"]} and hit.repaired
    assert hit.usage == Usage() and dict(hit.usage)["prompt_tokens"] == 0

    typed = StructuredResult(value={"id": 6, "tags": []}, raw_text='{"id":6,"tags":[]}',
                             backend="local", model="m-1", repaired=True,
                             repairs=[Repair("coerce", ("/id: '6' → 6 (integer)",))],
                             post_enforced=["/properties/id/multipleOf"],
                             usage=Usage(prompt_tokens=3, completion_tokens=9, http_s=0.1))
    assert cache.put(key, req, typed)
    entry = cache.decode(cache.store.get(ENTRY_PREFIX + key))  # type: ignore[arg-type]
    assert entry is not None and set(entry) == set(old)
    engine.close()
