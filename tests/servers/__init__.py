"""Servers the backend tests talk to on 127.0.0.1: a real vLLM process, and local
wire-format servers for SGLang and Ollama (which cannot run on this machine)."""
