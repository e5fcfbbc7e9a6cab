"""The Lambda's tests (stage 5). A package, so that its conftest does not shadow tests/conftest.py
(both would be the module `conftest` otherwise) when the whole suite runs."""
