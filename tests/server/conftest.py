"""A real ``structgen serve`` process on 127.0.0.1 and a free port, for the server tests:
started as a user starts it (the CLI, a config file), ready once ``/ready`` answers (the
model is loaded), stopped by its own PID."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-structgen-test"


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def openai_url(self) -> str:
        return f"{self.url}/v1"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for_output(self, pattern: str, timeout_s: float = 60) -> str:
        """The output once ``pattern`` (a regular expression) is in it. An access line is
        written after the answer has gone out, so a client can read the answer first."""
        deadline = time.monotonic() + timeout_s
        while not re.search(pattern, output := self.output()):
            assert time.monotonic() < deadline, f"{pattern!r} never logged:\n{output[-3000:]}"
            time.sleep(0.05)
        return output

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(folder: Path, config: str, *, ready_s: float = 600,
                 wait_for: str = "/ready") -> Served:
    """``structgen serve`` with ``config`` (TOML text), once ``wait_for`` says 200."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "config.toml"
    path.write_text(config)
    port = free_port()
    log = folder / "server.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from structgen.cli import main; main()", "serve",
             "--port", str(port), "--config", str(path)],
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=folder)
    served = Served(f"http://127.0.0.1:{port}", proc, log)
    deadline = time.monotonic() + ready_s
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"structgen serve exited {proc.returncode}:\n"
                                 f"{served.output()[-4000:]}")
        try:
            if httpx.get(f"{served.url}{wait_for}", timeout=ready_s).status_code == 200:
                return served
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            served.stop()
            raise AssertionError(f"structgen serve not ready:\n{served.output()[-4000:]}")
        time.sleep(0.2)


def tiny_config(model: Path, folder: Path, cache: str | None = None, **server: object) -> str:
    """A config serving ``model`` from the embedded backend; the result cache on disk in
    ``folder`` unless ``cache`` gives the ``[cache]`` table; ``server``: [server] keys over
    the tests' own (one key, a 1 MB body limit, 3 s to send headers and body)."""
    server = {"api_keys": [KEY], "max_body_bytes": 1048576, "header_timeout_s": 3,
              "body_timeout_s": 3, **server}
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in server.items())  # TOML too
    cache = cache or f'backend = "disk"\ndir = "{folder / "cache"}"'
    return (f'[llm_backend]\nprovider = "local"\nfallback = ["local"]\ntimeout_s = 600\n'
            f'[local]\nmodel = "{model}"\n[cache]\n{cache}\n'
            f'[metrics]\nstate_file = "{folder / "metrics.json"}"\n'
            f'[server]\n{lines}\n')


@pytest.fixture(scope="package")
def tiny_server(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[Served]:
    """The tiny random model behind ``structgen serve``: every answer's validity is the
    grammar's and the validator's doing, not the model's."""
    folder = tmp_path_factory.mktemp("tiny-serve")
    served = start_server(folder, tiny_config(tiny_model_dir, folder))
    yield served
    assert served.stop() == 0, served.output()[-4000:]
