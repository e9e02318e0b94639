"""``[server]`` settings: keys from the environment and from a file, never shown in a
config's repr; a missing key file is a ConfigError naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from structgen.config import Config
from structgen.errors import ConfigError
from structgen.server.app import api_keys


def test_keys_from_env_and_file_and_never_in_repr(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("sk-from-file\n\n  sk-second  \n")
    config = Config.load(env={"STRUCTGEN_SERVER_API_KEYS": "sk-env-1, sk-env-2",
                              "STRUCTGEN_SERVER_API_KEYS_FILE": str(keys)})
    assert api_keys(config.server) == ["sk-env-1", "sk-env-2", "sk-from-file", "sk-second"]
    shown = repr(config) + str(config.server)
    assert "sk-env" not in shown and "sk-from-file" not in shown


def test_a_missing_key_file_is_a_config_error(tmp_path: Path) -> None:
    config = Config.from_dict({"server": {"api_keys_file": str(tmp_path / "nope")}})
    with pytest.raises(ConfigError, match=r"server\.api_keys_file"):
        api_keys(config.server)


def test_defaults_bind_loopback_and_ask_no_key() -> None:
    server = Config.from_dict({}).server
    assert server.host == "127.0.0.1" and server.api_keys == [] and not server.cors_origins
    with pytest.raises(ConfigError, match=r"server\.max_body_bytes"):
        Config.from_dict({"server": {"max_body_bytes": 10}})
