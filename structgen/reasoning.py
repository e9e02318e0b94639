"""Reasoning models: which models think before answering, and how to keep the thinking out
of the answer.

Backends return the thinking in ``GenerationResult.reasoning_text`` (the embedded backend's
``free text until </think>, then JSON`` grammar, the servers' reasoning channels). Some
servers leave a ``<think>...</think>`` block at the start of the text instead; the router
calls :func:`separate_reasoning` on every result so that block is never parsed as the answer.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from structgen.backends import GenerationRequest, GenerationResult

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"

# Families whose chat models emit a thinking block first (matched on the lower-cased name).
_REASONING_NAME = re.compile(
    r"qwq|deepseek[-_]?r1|(^|[^a-z])r1([^a-z0-9]|$)|qwen3|think|reason|magistral|phi-4-reasoning"
    r"|gpt-oss|exaone-deep|skywork-or1|openthinker|s1\.1")


def split_think(text: str, *, opened: bool = False) -> tuple[str, str | None]:
    """Split ``text`` into ``(answer, thinking)``.

    A leading ``<think>...</think>`` block (after whitespace) is the thinking. With
    ``opened=True`` the prompt already opened the block (Qwen3 and DeepSeek-R1 templates
    do), so everything before the first ``</think>`` is thinking. A block that never closes
    is all thinking and no answer.

    >>> split_think("<think>hmm</think>{\\"a\\": 1}")
    ('{"a": 1}', 'hmm')
    """
    stripped = text.lstrip()
    if stripped.startswith(THINK_OPEN):
        body = stripped[len(THINK_OPEN):]
    elif opened and THINK_CLOSE in text:
        body = text
    else:
        return text, None
    thinking, sep, answer = body.partition(THINK_CLOSE)
    if not sep:
        return "", thinking.strip()
    return answer.strip(), thinking.strip()


def separate_reasoning(result: GenerationResult, request: GenerationRequest) -> GenerationResult:
    """Move a thinking block a backend left in ``result.text`` into ``reasoning_text``.

    Done in place (the result is fresh from a backend) and returned for chaining.
    """
    answer, thinking = split_think(result.text, opened=request.reasoning)
    if thinking is None:
        return result
    result.text = answer
    if result.reasoning_text:
        result.reasoning_text = result.reasoning_text + "\n" + thinking
    else:
        result.reasoning_text = thinking
    return result


def is_reasoning_model(name: str | None) -> bool:
    """True when ``name`` (a model id, or a local model directory) is a reasoning model.

    Checks the name against known reasoning families, then, for a local directory, whether
    its chat template mentions ``<think>``.
    """
    if not name:
        return False
    # Only the last component: a directory path may contain anything ("/tmp/reasoning/...").
    if _REASONING_NAME.search(name.lower().rstrip("/").rsplit("/", 1)[-1]):
        return True
    return _template_thinks(name)


@lru_cache(maxsize=64)
def _template_thinks(name: str) -> bool:
    path = Path(name)
    try:
        if not path.is_dir():
            return False
        texts: list[str] = []
        jinja = path / "chat_template.jinja"
        if jinja.is_file():
            texts.append(jinja.read_text(encoding="utf-8", errors="replace"))
        cfg = path / "tokenizer_config.json"
        if cfg.is_file():
            template = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
            texts.append(json.dumps(template))
    except (OSError, ValueError):
        return False
    return any(THINK_OPEN in t for t in texts)
