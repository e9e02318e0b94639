"""``structgen serve``: the engine behind an OpenAI- and Ollama-compatible HTTP API.

    app.py      the ASGI app (ids, keys, limits, errors), uvicorn, graceful shutdown
    protocol.py uvicorn's h11 protocol with deadlines on receiving a request
    openai.py   /v1/chat/completions, /v1/models (wire records, SSE)
    ollama.py   /api/chat, /api/generate, /api/tags, /api/version (NDJSON)
    calls.py    the one Call both formats become, answered by the Engine

See docs/serving.md.
"""

from structgen.server.app import create_app, run

__all__ = ["create_app", "run"]
