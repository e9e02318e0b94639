"""``structgen serve`` configured for a vLLM server that is not running (its port closed,
as after it stopped): the request is answered by the fallback, the embedded backend, and
the answer's ``structgen.attempts`` says vLLM was tried and failed. (vLLM answering through
the server is tests/backends/test_vllm_through_serve.py.)"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from tests.server.conftest import KEY, free_port, start_server, tiny_config
from tests.server.test_openai_api import SCHEMA

pytestmark = pytest.mark.slow


def test_a_stopped_vllm_falls_back_to_local(tiny_model_dir: Path, tmp_path: Path) -> None:
    config = tiny_config(tiny_model_dir, tmp_path, 'backend = "none"').replace(
        'provider = "local"\nfallback = ["local"]',
        'provider = "auto"\nfallback = ["vllm", "local"]')
    config += (f'[vllm]\nbase_url = "http://127.0.0.1:{free_port()}"\nmodel = "tiny"\n'
               'retries = 0\nconnect_timeout_s = 2\n')
    served = start_server(tmp_path, config)
    try:
        client = openai.OpenAI(base_url=served.openai_url, api_key=KEY, max_retries=0,
                               timeout=300)
        answer = client.chat.completions.create(
            model="structgen", messages=[{"role": "user", "content": "Status?"}],
            max_tokens=80, response_format={"type": "json_schema", "json_schema": {
                "name": "status", "schema": SCHEMA}})
        extension = (answer.model_extra or {})["structgen"]
        assert extension["backend"] == "local"
        assert extension["attempts"][0]["backend"] == "vllm"
        assert not extension["attempts"][0]["ok"]
        jsonschema.validate(json.loads(answer.choices[0].message.content or ""), SCHEMA)
        # pinned to the vLLM model: no fallback, a 503 in OpenAI's shape
        with pytest.raises(openai.APIStatusError) as info:
            client.chat.completions.create(model="tiny", max_tokens=10, messages=[
                {"role": "user", "content": "x"}], response_format={"type": "json_object"})
        assert info.value.status_code == 503
    finally:
        assert served.stop() == 0, served.output()[-3000:]


def test_ready_is_503_while_no_backend_can_serve(tmp_path: Path) -> None:
    """Only a vLLM server is configured and its port is closed: the process is live
    (``/health`` 200) but not ready (``/ready`` 503 in OpenAI's error shape), so a load
    balancer sends it nothing."""
    config = (f'[llm_backend]\nprovider = "vllm"\nfallback = ["vllm"]\ntimeout_s = 5\n'
              f'[vllm]\nbase_url = "http://127.0.0.1:{free_port()}"\nmodel = "tiny"\n'
              'retries = 0\nconnect_timeout_s = 1\n[cache]\nbackend = "none"\n'
              f'[metrics]\nstate_file = "{tmp_path / "metrics.json"}"\n'
              f'[server]\napi_keys = ["{KEY}"]\n')
    served = start_server(tmp_path, config, ready_s=120, wait_for="/health")
    try:
        ready = httpx.get(f"{served.url}/ready", timeout=60)
        assert ready.status_code == 503, ready.text
        assert ready.json()["error"]["type"] == "backend_unavailable"
    finally:
        assert served.stop() == 0, served.output()[-3000:]
