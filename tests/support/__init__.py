"""Helpers shared by the test files (the fixtures themselves live in tests/conftest.py).

Each module is named for what it holds; tests import them as `from support.X import ...`
(tests/ is on sys.path). The Lambda's own tests keep theirs in tests/lambda/support.py: they
also run alone, in the Lambda's Python, without this folder's dependencies."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
