"""Tooling around the runtime, never imported by it: schema conformance runs
(``structgen check``), builders of tiny real models for tests and benchmarks, and the demo
(``python -m structgen.tools.demo``)."""
