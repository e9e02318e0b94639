"""Shared data for the conformance tests (../shared/data relative to the project root)."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[3] / "shared" / "data"
MASKBENCH = DATA / "maskbench"
TEST_SUITE = DATA / "json-schema-test-suite" / "tests" / "draft2020-12"


@pytest.fixture(scope="session")
def maskbench_dir() -> Path:
    if not MASKBENCH.is_dir():
        pytest.skip(f"MaskBench data missing at {MASKBENCH} (present in CI)")
    return MASKBENCH


@pytest.fixture(scope="session")
def test_suite_dir() -> Path:
    if not TEST_SUITE.is_dir():
        pytest.skip(f"JSON-Schema-Test-Suite missing at {TEST_SUITE} (present in CI)")
    return TEST_SUITE
