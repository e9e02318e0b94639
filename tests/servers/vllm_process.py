"""Start and stop a real vLLM OpenAI-compatible server (CPU build in ``.venv-vllm``).

Used by the backend tests (session fixtures) and by ``benchmarks/client.py``. The server
runs in its own process group so :meth:`VLLMProcess.stop` ends it and its engine workers
by PID, never by name.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def vllm_python() -> Path:
    """The interpreter of the vLLM venv (``$STRUCTGEN_VLLM_PYTHON`` or ``.venv-vllm``)."""
    return Path(os.environ.get("STRUCTGEN_VLLM_PYTHON") or ROOT / ".venv-vllm/bin/python")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# vLLM's CPU attention kernels take these head sizes only (vllm/v1/attention/backends/
# cpu_attn.py, get_supported_head_sizes); a model with another head size fails at warm-up.
CPU_HEAD_SIZES = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)


def head_size(model_dir: Path) -> int:
    cfg = json.loads((model_dir / "config.json").read_text())
    return int(cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"])


def vllm_compatible_copy(model_dir: Path, out: Path) -> Path:
    """``model_dir`` itself when vLLM's CPU kernels accept it, else a copy re-initialised
    with 32-wide heads (same tokenizer, same random init scheme), written to ``out``."""
    if head_size(model_dir) in CPU_HEAD_SIZES:
        return model_dir
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out.mkdir(parents=True, exist_ok=True)
    for f in model_dir.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template", "generation")):
            shutil.copy(f, out / f.name)
    cfg = LlamaConfig.from_pretrained(model_dir)
    cfg.num_attention_heads = max(1, cfg.hidden_size // 32)
    cfg.num_key_value_heads = 1
    cfg.head_dim = cfg.hidden_size // cfg.num_attention_heads
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(out)
    return out


@dataclass
class VLLMProcess:
    """A running vLLM server."""

    proc: subprocess.Popen[bytes]
    base_url: str
    model: str
    engine: str
    log_path: Path

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL it if still alive after 20 s."""
        if self.proc.poll() is not None:
            return
        pgid = self.proc.pid  # start_new_session=True: the server leads its own group
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(pgid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""


def start_vllm(model_dir: Path, *, engine: str, workdir: Path, port: int | None = None,
               compact: bool = True, ready_timeout_s: float = 600.0,
               extra_args: tuple[str, ...] = (),
               env: dict[str, str] | None = None) -> VLLMProcess:
    """Launch ``vllm.entrypoints.openai.api_server`` on 127.0.0.1 and wait until it serves.

    ``engine`` is the structured-output backend (``guidance``, ``xgrammar``, ``outlines``).
    ``compact`` sets ``disable_any_whitespace`` server-wide (vLLM 0.32 reads it there only).
    ``env`` adds environment variables for the server (e.g. ``VLLM_*`` switches).
    """
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"vllm-{engine}-{port}.log"
    so_config = {"backend": engine, "disable_any_whitespace": compact}
    cmd = [str(vllm_python()), "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(model_dir), "--served-model-name", model_dir.name,
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--max-model-len", "512", "--structured-outputs-config", json.dumps(so_config),
           "--enable-per-request-metrics", *extra_args]
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1", VLLM_CACHE_ROOT=str(workdir / "cache"),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", VLLM_NO_USAGE_STATS="1",
               DO_NOT_TRACK="1", **(env or {}))
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True, cwd=workdir)
    server = VLLMProcess(proc, f"http://127.0.0.1:{port}", model_dir.name, engine, log_path)
    atexit.register(server.stop)  # also when the caller dies before its own cleanup
    deadline = time.monotonic() + ready_timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"vLLM exited with {proc.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.base_url}/v1/models", timeout=2) as r:
                if r.status == 200:
                    return server
        except OSError:
            pass
        time.sleep(1.0)
    server.stop()
    raise RuntimeError(f"vLLM not ready after {ready_timeout_s:.0f} s:\n{server.log_tail()}")
