"""The Lambda's module, for the cross-stage tests."""

from __future__ import annotations

import importlib.util
import sys

from support import REPO


def lambda_module(name: str = "waddle_lambda_function"):
    """lambda/lambda_function.py imported by path (`lambda` is a keyword, not a package), as a
    new module: its settings and client come from the environment of the moment. The Lambda's
    own tests (tests/lambda/support.py) keep their copy: they run without this conftest."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPO / "lambda" / "lambda_function.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module
