"""The README, env.example, .ci/run and the scripts' --help agree with each other."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from conftest import REPO

README = (REPO / "README.md").read_text()
ENV_EXAMPLE = (REPO / "env.example").read_text()
STAGES = ["download_dataset.py", "transform_load_csv_data.py", "batch_transfer_data_to_cloud_storage.py"]


def env_example_variables():
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", ENV_EXAMPLE, flags=re.M))


def test_docs_ci_runs_the_readme_test_command():
    command = re.search(r"pip install -r requirements-dev\.txt && python -m pytest", README)
    assert command, "README lost its test command"
    assert command.group(0) in (REPO / ".ci" / "run").read_text()


def test_docs_every_env_example_variable_is_in_the_readme_table():
    table_rows = [line for line in README.splitlines() if line.startswith("| `")]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", "\n".join(table_rows)))
    assert env_example_variables() - documented == set()


def test_docs_every_variable_the_code_reads_is_in_env_example():
    code = (REPO / "waddle_common.py").read_text()
    read = {name for pair in re.findall(r'\(\s*env,\s*"([A-Z][A-Z0-9_]+)"|env\.get\(\s*"([A-Z][A-Z0-9_]+)"', code)
            for name in pair if name}
    assert {"MAX_REJECT_RATE", "S3_BUCKET_NAME"} <= read
    read |= {f"{t.upper()}_CSV_URL" for t in ("customer", "destination", "booking")}
    read -= {"PGCONNECT_TIMEOUT"}  # libpq's own, documented in the README table
    assert read - env_example_variables() == set()


@pytest.mark.parametrize("script", [s for s in STAGES if (REPO / s).exists()])
def test_docs_every_stage_has_help(script):
    result = subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--env-file" in result.stdout


def rules_table_functions() -> list[str]:
    """The Function column of README's cleansing-rules table, in table order."""
    start = README.index("| # | Rule | Function |")
    rows = README[start:README.index("\n\n", start)].splitlines()[2:]
    return [name for row in rows for name in re.findall(r"`([a-z_]+)`", row.split(" | ")[2])]


def test_docs_each_rule_names_a_function_of_cleansing_in_the_tables_order():
    import ast

    import cleansing

    source = (REPO / "cleansing.py").read_text()
    lines = {node.name: node.lineno for node in ast.parse(source).body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    named = [name for name in dict.fromkeys(rules_table_functions()) if name != "reject_emails_in_use"]
    assert all(callable(getattr(cleansing, name, None)) for name in named), named
    assert [lines[name] for name in named] == sorted(lines[name] for name in named)
    # Rule 12 needs the stored customers: it is SQL, in the stage.
    import transform_load_csv_data as stage

    assert callable(stage.reject_emails_in_use)
    assert "reject_emails_in_use" in rules_table_functions()
