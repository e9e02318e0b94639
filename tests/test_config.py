"""config.toml + STRUCTGEN_* environment: good values load, bad ones raise ConfigError
naming the key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from structgen.backends import create_backend
from structgen.config import Config
from structgen.errors import ConfigError

GOOD = """
[llm_backend]
provider = "vllm"
fallback = ["vllm", "local"]
timeout_s = 30

[vllm]
base_url = "http://127.0.0.1:8000/"
model = "smollm"

[cache]
backend = "none"
"""


def _write(tmp_path: Path, text: str | bytes) -> Path:
    path = tmp_path / "config.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_good_file_loads_and_env_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    cfg = Config.load(path, env={})
    assert cfg.llm_backend.provider == "vllm"
    assert cfg.llm_backend.fallback == ["vllm", "local"]
    assert cfg.vllm.base_url == "http://127.0.0.1:8000"  # trailing slash dropped
    assert cfg.cache.backend == "none"
    cfg = Config.load(path, env={"STRUCTGEN_PROVIDER": "ollama",
                                 "STRUCTGEN_FALLBACK": "ollama, local",
                                 "STRUCTGEN_VLLM_MODEL": "other",
                                 "STRUCTGEN_REPAIR_REASK": "false",
                                 "STRUCTGEN_SOME_TEST_KNOB": "ignored"})
    assert cfg.llm_backend.provider == "ollama"
    assert cfg.llm_backend.fallback == ["ollama", "local"]
    assert cfg.vllm.model == "other"
    assert cfg.repair.reask is False


def test_defaults_without_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no ./config.toml here
    cfg = Config.load(env={})
    assert cfg.llm_backend.provider == "auto"
    assert cfg.local.engine == "llguidance"


# (file text or None, env, expected key or None, words in the message)
BAD: dict[str, tuple[str | bytes | None, dict[str, str], str | None, str]] = {
    "unknown-section": ("[vlm]\nbase_url = 'http://x'\n", {}, "vlm", "unknown key"),
    "unknown-key": ("[vllm]\nbse_url = 'http://x'\n", {}, "vllm.bse_url", "unknown key"),
    "unknown-top-level-key": ("provider = 'vllm'\n", {}, "provider", "unknown key"),
    "bad-provider": ("[llm_backend]\nprovider = 'openai'\n", {}, "llm_backend.provider",
                     "'auto'"),
    "bad-fallback-entry": ("[llm_backend]\nfallback = ['vllm', 'tgi']\n", {},
                           "llm_backend.fallback.1", "'local'"),
    "bad-type-timeout": ("[llm_backend]\ntimeout_s = 'fast'\n", {}, "llm_backend.timeout_s",
                         "number"),
    "nonpositive-timeout": ("[llm_backend]\ntimeout_s = 0\n", {}, "llm_backend.timeout_s",
                            "greater than 0"),
    "bad-url-scheme": ("[vllm]\nbase_url = 'localhost:8000'\n", {}, "vllm.base_url",
                       "http://"),
    "bad-url-type": ("[sglang]\nbase_url = 8000\n", {}, "sglang.base_url", "string"),
    "section-not-table": ("vllm = 3\n", {}, "vllm", "valid dictionary"),
    "bad-port": ("[metrics]\nport = 70000\n", {}, "metrics.port", "65535"),
    "bad-cache-backend": ("[cache]\nbackend = 'memcached'\n", {}, "cache.backend", "'disk'"),
    "bad-local-engine": ("[local]\nengine = 'guidance'\n", {}, "local.engine", "'llguidance'"),
    "bad-bool": ("[repair]\nreask = 'maybe'\n", {}, "repair.reask", "boolean"),
    "negative-retries": ("[vllm]\nretries = -1\n", {}, "vllm.retries", "greater than or equal"),
    "invalid-toml": ("[vllm\nbase_url = 'x'\n", {}, None, "not valid TOML"),
    "not-utf8": (b"[vllm]\nmodel = '\xff\xfe'\n", {}, None, "not valid TOML"),
    "env-bad-provider": (None, {"STRUCTGEN_PROVIDER": "bogus"}, "llm_backend.provider",
                         "'auto'"),
    "env-bad-url": (None, {"STRUCTGEN_VLLM_BASE_URL": "ftp://x"}, "vllm.base_url", "http://"),
    "env-bad-number": (None, {"STRUCTGEN_TIMEOUT_S": "soon"}, "llm_backend.timeout_s",
                       "number"),
    "env-over-non-table": ("ollama = 'x'\n", {"STRUCTGEN_OLLAMA_MODEL": "m"}, "ollama",
                           "must be a table"),
}


@pytest.mark.parametrize(("text", "env", "key", "words"), BAD.values(), ids=BAD.keys())
def test_bad_config_raises_config_error(tmp_path: Path, text: str | bytes | None,
                                        env: dict[str, str], key: str | None,
                                        words: str) -> None:
    path = _write(tmp_path, text) if text is not None else None
    if path is None:
        env = {**env, "STRUCTGEN_CONFIG": str(_write(tmp_path, ""))}
    with pytest.raises(ConfigError) as info:
        Config.load(path, env=env)
    assert info.value.key == key
    assert words in str(info.value)
    assert info.value.__cause__ is None


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        Config.load(tmp_path / "nope.toml", env={})
    with pytest.raises(ConfigError, match="config file not found"):
        Config.load(env={"STRUCTGEN_CONFIG": str(tmp_path / "gone.toml")})


def test_bad_override_and_unknown_backend(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        Config.load(env={}, overrides={"vllm.modle": "x"})
    assert info.value.key == "vllm.modle"
    with pytest.raises(ConfigError, match="unknown backend 'tgi'"):
        create_backend("tgi", Config())



def test_repr_never_shows_secrets() -> None:
    cfg = Config.from_dict({
        "vllm": {"base_url": "http://127.0.0.1:8000", "api_key": "sk-VLLMSECRET"},
        "ollama": {"api_key": "sk-OLLAMASECRET"},
        "cache": {"backend": "redis", "url": "redis://app:hunter2@127.0.0.1:6379/0"}})
    for text in (repr(cfg), str(cfg), repr(cfg.vllm), str(cfg.cache), f"{cfg!r}"):
        assert "SECRET" not in text and "hunter2" not in text, text
    assert "api_key='**********'" in repr(cfg.vllm) and "app:***@127.0.0.1" in repr(cfg.cache)
    assert cfg.vllm.api_key == "sk-VLLMSECRET"  # the value itself is intact for its users
    assert cfg.cache.url == "redis://app:hunter2@127.0.0.1:6379/0"
    assert "api_key=None" in repr(Config().sglang)  # nothing set: nothing to hide


def _listening(port: int) -> set[str]:
    """Local addresses of the TCP sockets listening on ``port`` (read from /proc)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for row in f.readlines()[1:]:
                local, state = row.split()[1], row.split()[3]
                addr, _, hexport = local.rpartition(":")
                if state == "0A" and int(hexport, 16) == port:  # 0A: LISTEN
                    found.add(addr)
    return found


def test_metrics_endpoint_listens_on_loopback_unless_configured(tmp_path: Path) -> None:
    import socket
    import urllib.request

    from structgen.metrics import Metrics

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    cfg = Config.from_dict({"metrics": {"port": port,
                                        "state_file": str(tmp_path / "m.json")}})
    Metrics(cfg.metrics)
    assert _listening(port) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0 (00000000)
    assert cfg.metrics.host == "127.0.0.1"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        assert b"structgen_" in r.read()
    env = Config.load(None, env={"STRUCTGEN_METRICS_HOST": "0.0.0.0"})
    assert env.metrics.host == "0.0.0.0"  # a wider address is the operator's choice


@pytest.mark.parametrize("text", [
    "x = " + "1" * 5000,  # tomllib: ValueError past Python's 4300-digit limit
    "x = " + "[" * 3000 + "]" * 3000,  # tomllib: RecursionError
    "[cache]\nttl_s = inf", "[router]\nhealth_interval_s = nan", "[llm_backend]\ntimeout_s = inf",
], ids=["int-5000-digits", "deep-arrays", "ttl-inf", "interval-nan", "timeout-inf"])
def test_config_files_the_fuzzer_broke_are_config_errors(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError):
        Config.load(_write(tmp_path, text), env={})


def test_env_values_that_look_like_json_but_break_the_parser(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    deep = Config.load(path, env={"STRUCTGEN_CACHE_DIR": "[" * 5000})
    assert deep.cache.dir == "[" * 5000  # not JSON after all: kept as the string it is
    with pytest.raises(ConfigError, match=r"cache\.ttl_s"):
        Config.load(path, env={"STRUCTGEN_CACHE_TTL_S": "[" + "1" * 5000 + "]"})


def test_a_misspelt_environment_variable_is_warned_with_a_suggestion(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A misspelt file key is an error; a misspelt STRUCTGEN_* variable is at least a
    warning (naming the closest setting), once per name."""
    env = {"STRUCTGEN_VLLM_BASEURL": "http://x", "STRUCTGEN_CONFIG_DIR": "y",
           "STRUCTGEN_ALLOW_MISSING_SERVICES": "1"}  # a test-suite knob: not warned
    with caplog.at_level(logging.WARNING, logger="structgen"):
        Config.load(None, env=env)
        Config.load(None, env=env)
    warned = [r.getMessage() for r in caplog.records if r.name == "structgen.config"]
    assert warned == [
        "structgen: environment variable STRUCTGEN_VLLM_BASEURL is not a setting, ignored "
        "(did you mean 'STRUCTGEN_VLLM_BASE_URL'?)",
        "structgen: environment variable STRUCTGEN_CONFIG_DIR is not a setting, ignored"
        + warned[1].partition("ignored")[2]]


@pytest.mark.parametrize(("data", "words"), [
    ({"vllm": {"base_ur": "http://x"}}, "vllm.base_ur: unknown key (did you mean 'base_url'?)"),
    ({"cach": {}}, "cach: unknown key (did you mean 'cache'?)"),
    ({"llm_backend": {"provider": "vlm"}}, "(did you mean 'vllm'?)"),
])
def test_config_errors_suggest_the_closest_name(data: dict, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        Config.from_dict(data)
    assert words in str(info.value)


def test_an_unknown_backend_name_gets_a_suggestion() -> None:
    with pytest.raises(ConfigError, match=r"unknown backend 'olama' \(did you mean 'ollama'\?\)"):
        create_backend("olama", Config())
