"""The README's serving examples (its curl line and its ``openai`` client block) run as
written against a live ``structgen serve``, with only the address and key put in."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.conftest import KEY, ROOT, Served

pytestmark = pytest.mark.slow

SECTION = re.compile(r"^## Serving \(`structgen serve`\)\n(.*?)^## ", re.S | re.M)


def _block(fence: str) -> str:
    section = SECTION.search((ROOT / "README.md").read_text())
    assert section, "README has no serving section"
    found = re.search(rf"^```{fence}\n(.*?)^```", section.group(1), re.S | re.M)
    assert found, f"no ```{fence} block in the serving section"
    return found.group(1)


def test_curl_example(tiny_server: Served) -> None:
    lines = _block("sh").split("\n", 1)[1]  # after the `structgen serve` line
    assert lines.startswith("curl ")
    command = lines.replace("http://127.0.0.1:8000", tiny_server.url)
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "STRUCTGEN_KEY": KEY}, check=True)
    answer = json.loads(done.stdout)
    assert isinstance(json.loads(answer["choices"][0]["message"]["content"])["green"], bool)


def test_openai_client_example(tiny_server: Served, tmp_path: Path) -> None:
    code = (_block("py").replace("http://127.0.0.1:8000", tiny_server.url)
            .replace("sk-your-key", KEY))
    script = tmp_path / "example.py"
    script.write_text(code)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300, check=True)
    assert re.fullmatch(r"green=(True|False)\n", done.stdout), done.stdout
