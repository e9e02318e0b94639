"""An engine on the tiny random model with its own result cache, for the batch tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from structgen.config import Config


@pytest.fixture
def tiny_config(tmp_path: Path, tiny_model_dir: Path) -> Config:
    cfg = Config()
    cfg.llm_backend.provider = "local"
    cfg.local.model = str(tiny_model_dir)
    cfg.local.max_batch = 4
    cfg.cache.dir = str(tmp_path / "results")
    cfg.cache.grammar_dir = str(tmp_path / "grammars")
    cfg.metrics.state_file = str(tmp_path / "metrics.json")
    return cfg
