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
    code = (REPO / "waddle_common" / "__init__.py").read_text()
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


@pytest.mark.parametrize("module", ["waddle_common", "waddle_common.local_services"])
def test_docs_module_commands_have_help_that_names_the_command_to_type(module):
    # python -m runs them from the package: argparse alone would call them __main__.py.
    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True,
                            timeout=60, cwd=REPO, check=False)
    assert result.returncode == 0
    assert result.stdout.split("\n", 1)[0].startswith(f"usage: python -m {module} ")


def rules_table_functions() -> list[str]:
    """The Function column of README's cleansing-rules table, in table order."""
    start = README.index("| # | Rule | Function |")
    rows = README[start:README.index("\n\n", start)].splitlines()[2:]
    return [name for row in rows for name in re.findall(r"`([a-z_]+)`", row.split(" | ")[2])]


def test_docs_each_rule_names_a_function_of_cleansing_in_the_tables_order():
    import ast

    from waddle_common import cleansing

    source = (REPO / "waddle_common" / "cleansing.py").read_text()
    lines = {node.name: node.lineno for node in ast.parse(source).body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    named = [name for name in dict.fromkeys(rules_table_functions()) if name != "reject_emails_in_use"]
    assert all(callable(getattr(cleansing, name, None)) for name in named), named
    assert [lines[name] for name in named] == sorted(lines[name] for name in named)
    # Rule 12 needs the stored customers: it is SQL, on stage 3's database side.
    from waddle_common import load_database

    assert callable(load_database.reject_emails_in_use)
    assert "reject_emails_in_use" in rules_table_functions()


# ---------------------------------------------------------------------------------------
# Every table that names variables, limits and codes agrees with env.example, the code and
# --help; every document is linked and every relative link resolves.

LAMBDA_README = (REPO / "lambda" / "README.md").read_text()
LAMBDA_ENV_EXAMPLE = (REPO / "lambda" / "env.example").read_text()
DOCS = {path.relative_to(REPO).as_posix(): path.read_text() for path in sorted((REPO / "docs").glob("*.md"))}
DOCUMENTS = {"README.md": README, "lambda/README.md": LAMBDA_README, **DOCS}
VARIABLE = r"`([A-Z][A-Z0-9]*_[A-Z0-9_]+|[A-Z]{3,})`"
# Read by boto3 itself (every service's endpoint), never by the pipeline's own code: documented
# where they matter, but no env.example sets them.
OUTSIDE_VARIABLES = {"AWS_ENDPOINT_URL"}
# Upper-case values, not variables: Athena's result encryption options (docs/athena.md).
VALUES = {"SSE_KMS", "SSE_S3"}


def table_rows(text: str) -> list[list[str]]:
    """The body rows of every Markdown table in text, as lists of cells (header and rule skipped)."""
    rows, previous = [], ""
    for line in (line.strip() for line in text.splitlines()):  # a table in a list item is indented
        if line.startswith("|") and not re.fullmatch(r"\|[\s:|-]+\|", line):
            if previous.startswith("|"):
                rows.append([cell.strip() for cell in line.strip("|").split(" | ")])
        previous = line if line.startswith("|") else ""
    return [row for row in rows if not re.fullmatch(r"[\s:|-]+", "".join(row))]


def table_after(text: str, header: str) -> list[list[str]]:
    start = text.index(header)
    return table_rows(text[start:text.index("\n\n", start)])


def config_table() -> dict[str, list[str]]:
    """README's configuration table: each variable named in the first column -> its row."""
    rows = table_after(README, "| Variable | Used by | Meaning | Default |")
    return {name: row for row in rows for name in re.findall(VARIABLE, row[0])}


def mentioned(text: str) -> set[str]:
    return set(re.findall(r"\b[A-Z][A-Z0-9]*_[A-Z0-9_]*[A-Z0-9]\b", text))


def test_docs_every_variable_in_a_table_is_one_env_example_sets_or_mentions():
    known = mentioned(ENV_EXAMPLE) | mentioned(LAMBDA_ENV_EXAMPLE) | OUTSIDE_VARIABLES
    for where, text in DOCUMENTS.items():
        named = {name for row in table_rows(text) for cell in row for name in re.findall(VARIABLE, cell)}
        named = {name for name in named if "_" in name or name in known} - VALUES  # `AES256`, `PUBLIC`: values
        assert named - known == set(), f"{where} names variables no env.example has: {sorted(named - known)}"


def test_docs_the_configuration_table_covers_both_env_examples_and_says_who_reads_them():
    table = config_table()
    lambda_variables = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]+)=", LAMBDA_ENV_EXAMPLE, flags=re.M))
    assert env_example_variables() | lambda_variables <= set(table)
    # "Lambda" in the Used-by column exactly for the variables lambda/env.example documents.
    assert {name for name, row in table.items() if "Lambda" in row[1]} == lambda_variables
    # lambda/README.md's own table names exactly lambda/env.example's variables.
    rows = table_after(LAMBDA_README, "| setting | meaning | environment variable | default |")
    assert {name for row in rows for name in re.findall(VARIABLE, row[2])} == lambda_variables


def code_settings() -> dict[str, tuple[object, list[str]]]:
    """Settings.from_env's reads: variable -> (default, the numbers of its allowed range)."""
    import ast

    import waddle_common as common

    source = (REPO / "waddle_common" / "__init__.py").read_text()
    tree = ast.parse(source)
    from_env = next(node for node in ast.walk(tree) if isinstance(node, ast.FunctionDef) and node.name == "from_env")
    settings = {}
    for call in ast.walk(from_env):
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id.startswith("_env_"):
            name = call.args[1].value
            default = ast.literal_eval(call.args[2]) if len(call.args) > 2 else 0  # _env_flag: off
            allowed = call.args[4] if len(call.args) > 4 else ast.Constant("")
            allowed = getattr(common, allowed.id) if isinstance(allowed, ast.Name) else allowed.value  # SHARE
            settings[name] = (default, re.findall(r"\d+", allowed))
        elif isinstance(call, ast.BoolOp) and isinstance(call.op, ast.Or):
            names = [n.value for n in ast.walk(call.values[0]) if isinstance(n, ast.Constant)
                     and isinstance(n.value, str) and re.fullmatch(r"[A-Z][A-Z0-9_]+", n.value)]
            if names and isinstance(call.values[-1], ast.Constant):
                settings[names[0]] = (call.values[-1].value, [])
    return settings


def same_value(documented: str, value: object) -> bool:
    documented = documented.removeprefix("./")
    if isinstance(value, bool) or isinstance(value, (int, float)):
        try:
            return float(documented) == float(value)
        except ValueError:
            return False
    return documented == str(value)


def test_docs_defaults_and_ranges_in_the_configuration_table_are_the_codes():
    table = config_table()
    settings = code_settings()
    assert {"DOWNLOAD_RETRIES", "EXPORT_COMPRESSION_LEVEL", "S3_SSE", "DOWNLOAD_DIR"} <= set(settings)
    env_values = dict(re.findall(r"^([A-Z][A-Z0-9_]+)=(.*)$", ENV_EXAMPLE, flags=re.M))
    for name, (default, bounds) in settings.items():
        row = table[name]
        documented = re.findall(r"`([^`]*)`", row[3])
        assert documented and same_value(documented[0], default), f"{name}: README default {row[3]!r}, code {default!r}"
        if name in env_values:
            assert same_value(env_values[name], default), f"{name}: env.example {env_values[name]!r}, code {default!r}"
        # The range the code checks, in the words of its error message, is the documented one.
        for bound in bounds:
            assert re.search(rf"(?<![\d.]){bound}(?![\d.])", row[2]), f"{name}: README lacks the bound {bound}"


def stage_help(script: str) -> str:
    return subprocess.run([sys.executable, str(REPO / script), "--help"], capture_output=True, text=True,
                          timeout=60, check=True).stdout


@pytest.mark.parametrize("script", STAGES + ["lambda/lambda_function.py"])
def test_docs_help_names_only_documented_variables_with_their_documented_defaults(script):
    help_text = stage_help(script)
    constants = set(re.findall(r"^([A-Z][A-Z0-9_]+)\s*[:=]", (REPO / script).read_text(), flags=re.M))
    table = config_table()
    for name in mentioned(help_text) - constants:  # KEEP_REPLACED_SECONDS, EXPORT_MONEY: the script's own
        assert name in table or name in mentioned(ENV_EXAMPLE), f"{script} --help names {name}, README does not"
    # "(default: $EXPORT_BATCH_SIZE, 50000)": the fallback --help gives is the table's default.
    for name, value in re.findall(r"\$([A-Z][A-Z0-9_]+),\s+([^)\s]+)\)", " ".join(help_text.split())):
        assert same_value(re.findall(r"`([^`]*)`", table[name][3])[0], value), (script, name, value)


def test_docs_options_in_the_tables_exist_in_help():
    used_by = {"download": "download_dataset.py", "load": "transform_load_csv_data.py",
               "export": "batch_transfer_data_to_cloud_storage.py", "Lambda": "lambda/lambda_function.py"}
    helps = {stage: stage_help(script) for stage, script in used_by.items()}
    for name, row in config_table().items():
        for option in re.findall(r"`(--[a-z-]+)", row[2]):
            stages = [stage for stage in used_by if stage in row[1]]
            assert any(re.search(rf"{option}\b", helps[s]) for s in stages), f"{name}: {option} is in no --help"
    travel_help = subprocess.run([str(REPO / "travel.sh"), "--help"], capture_output=True, text=True,
                                 timeout=60, check=True).stdout
    documented = {re.match(r"`(--[a-z-]+)", row[0]).group(1) for row in table_after(README, "| Option | Meaning |")}
    assert documented == set(re.findall(r"^\s+(--[a-z-]+)", travel_help, flags=re.M)) - {"--help"}


def rule_codes() -> list[str]:
    """The rule codes in the Rule column of README's cleansing-rules table."""
    rows = table_after(README, "| # | Rule | Function |")
    return [code for row in rows for code in re.findall(r"`([a-z_]+)`", row[1])]


# Rule-column names that repair or impute a value: no row is rejected with them.
REPAIRS = {"normalise_text", "trim_text", "lower_case_email", "capitalise_season", "impute_passengers", "impute_cost"}


def reject_prefixes() -> set[str]:
    """Every "code: ..." string literal (f-strings too) the stage and its rules write as a reason."""
    import ast

    codes = set()
    for name in ("waddle_common/cleansing.py", "transform_load_csv_data.py"):
        for node in ast.walk(ast.parse((REPO / name).read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                codes |= set(re.findall(r"^([a-z]+(?:_[a-z]+)+): ", node.value))
            # reject_duplicates(table, column, keys, "duplicate_key", ...) writes f"{code}: ..."
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "reject_duplicates":
                codes |= {arg.value for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                          and arg.value.startswith("duplicate_")}
    return codes


def test_docs_every_rule_code_is_a_reject_reason_the_code_writes_and_back():
    documented = set(rule_codes())
    assert REPAIRS <= documented
    written = reject_prefixes()
    assert documented - REPAIRS - written == set(), "codes in README's rules table that no reject_reason starts with"
    assert written - documented == set(), "reject_reason codes missing from README's rules table"
    assert REPAIRS & written == set()


def exit_codes_of_the_code() -> set[int]:
    import waddle_common

    source = (REPO / "waddle_common" / "__init__.py").read_text()
    codes = {value for name, value in vars(waddle_common).items() if name.startswith("EXIT_")}
    return codes | {int(code) for code in re.findall(r"_report\(stage, [^,]+, (\d+)", source)}


def test_docs_every_exit_status_in_a_table_is_one_the_code_returns():
    table = {int(row[0].strip("`")) for row in table_after(README, "| Exit status | Meaning |")}
    assert table == exit_codes_of_the_code()
    for where, text in DOCUMENTS.items():
        for row in table_rows(text):
            for code in re.findall(r"\bexit (?:status |code )?\(?`?(\d+)", " ".join(row)):
                assert int(code) in table, f"{where}: exit {code} in {row[0]!r} is no documented exit status"


def github_anchor(heading: str) -> str:
    """The id GitHub gives a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def test_docs_every_document_is_linked_from_a_readme():
    linked = {(REPO / m).resolve() for m in re.findall(r"\]\(([^)#\s]+)", README)}
    linked |= {(REPO / "lambda" / m).resolve() for m in re.findall(r"\]\(([^)#\s]+)", LAMBDA_README)}
    assert {REPO / name for name in DOCS} - linked == set()


@pytest.mark.parametrize("where", list(DOCUMENTS))
def test_docs_every_relative_link_resolves_to_a_file_and_heading(where):
    text = DOCUMENTS[where]
    base = (REPO / where).parent
    for target, anchor in re.findall(r"\]\((?!https?://|mailto:)([^)#\s]*)(?:#([^)\s]+))?\)", text):
        path = (base / target).resolve() if target else REPO / where
        assert path.exists(), f"{where}: link to {target} that does not exist"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", path.read_text(), flags=re.M)
            assert anchor in {github_anchor(h) for h in headings}, f"{where}: no heading #{anchor} in {target or where}"


@pytest.mark.parametrize("where", list(DOCUMENTS))
def test_docs_every_repository_path_named_exists(where):
    """`tests/test_faults.py`, `lambda/template.yaml`, ...: a file a document names is there."""
    for path in re.findall(r"`((?:tests|lambda|docs|sample_data|\.ci)/[\w./-]*[\w/])`", DOCUMENTS[where]):
        if re.search(r"[A-Z]{3,}", path):  # a placeholder: .ci/venvs/NAME.log
            continue
        assert (REPO / path).exists(), f"{where} names {path}, which does not exist"


def test_docs_lambda_readme_shows_every_test_event_as_it_is():
    """lambda/README.md's console test events are the files of lambda/events/, shown with their values."""
    import json

    rows = {row[0].strip("`"): row for row in table_after(LAMBDA_README, "| File | Event | Result |")}
    files = sorted((REPO / "lambda" / "events").glob("*.json"))
    assert set(rows) == {path.relative_to(REPO).as_posix() for path in files}
    for path in files:
        event = json.loads(path.read_text())
        for key in ("date", "time"):
            if key in event:
                assert f'"{key}": "{event[key]}"' in rows[path.relative_to(REPO).as_posix()][1], (path.name, key)
