"""``structgen serve`` in front of the session's real vLLM CPU servers (one per
structured-output engine): the same OpenAI client, pointed at structgen, gets vLLM's answer
validated, and the answer names vLLM as the backend. (The fallback when vLLM is gone is
tests/server/test_fallback.py.) Here rather than in tests/server/ to share the vLLM
servers this directory's conftest starts once per session."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import openai
import pytest

from tests.server.conftest import KEY, start_server, tiny_config
from tests.server.test_openai_api import SCHEMA
from tests.servers.vllm_process import VLLMProcess

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def test_vllm_answers_through_serve(vllm_tiny: VLLMProcess, tiny_model_dir: Path,
                                    tmp_path: Path) -> None:
    config = tiny_config(tiny_model_dir, tmp_path, 'backend = "none"').replace(
        'provider = "local"\nfallback = ["local"]',
        'provider = "auto"\nfallback = ["vllm", "local"]')
    config += f'[vllm]\nbase_url = "{vllm_tiny.base_url}"\nmodel = "{vllm_tiny.model}"\n'
    served = start_server(tmp_path, config)
    try:
        client = openai.OpenAI(base_url=served.openai_url, api_key=KEY, max_retries=0,
                               timeout=300)
        answer = client.chat.completions.create(
            model="structgen", messages=[{"role": "user", "content": "Status?"}],
            max_tokens=80, response_format={"type": "json_schema", "json_schema": {
                "name": "status", "schema": SCHEMA}})
        extension = (answer.model_extra or {})["structgen"]
        assert extension["backend"] == "vllm" and extension["model"] == vllm_tiny.model
        jsonschema.validate(json.loads(answer.choices[0].message.content or ""), SCHEMA)
        # the vLLM model's own name routes to vLLM only
        assert vllm_tiny.model in [m.id for m in client.models.list()]
    finally:
        assert served.stop() == 0, served.output()[-3000:]
