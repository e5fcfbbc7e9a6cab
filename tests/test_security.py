"""Security on real components: PostgreSQL roles and privileges after travel.sql,
database credentials from AWS Secrets Manager (moto's server), the password check and
STRICT_SECURITY, PGSSLMODE, .env permissions, .gitignore, and a leak test that runs every
stage in a subprocess with known canary secrets and searches every output for them."""

from __future__ import annotations

import itertools
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote, unquote, urlparse, urlunparse

import boto3
import psycopg2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psycopg2 import sql

import batch_transfer_data_to_cloud_storage as export_stage
import transform_load_csv_data as load_stage
import waddle_common as common
from support import REPO
from support.database import apply_schema, libpq_env, query, run_psql, with_database
from waddle_common.local_services import EmbeddedPostgres, free_port

DAY = "2024-05-01"
TABLES = ("destination", "customer", "booking", "load_run", "load_run_table")
ALL_TABLES = (*TABLES, "tables_version")
# The loader reads tables_version; the triggers its writes fire count them there.
LOADER_GRANTS = {**{t: {"SELECT", "INSERT", "UPDATE"} for t in TABLES}, "tables_version": {"SELECT"}}
STRONG = "Strong-Pw-" + secrets.token_hex(16)  # 42 characters, letters and digits

# ---------------------------------------------------------------------------------------
# Helpers


_role_numbers = itertools.count(1)


def login_url(database_url: str, user: str, password: str | None = None) -> str:
    """`database_url` for another user; the password percent-encoded (None: no password)."""
    parts = urlparse(database_url)
    auth = quote(user, safe="") + (f":{quote(password, safe='')}" if password is not None else "")
    return urlunparse(parts._replace(netloc=f"{auth}@{parts.hostname}:{parts.port}"))


@pytest.fixture
def login_user(pg_admin_url):
    """Factory: a new LOGIN user holding only `group` (or nothing); dropped after the test."""
    created: list[str] = []

    def make(database_url: str, group: str | None, password: str = STRONG) -> str:
        name = f"waddle_user_{os.getpid()}_{next(_role_numbers)}"
        conn = psycopg2.connect(pg_admin_url)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                cur.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(name)), (password,))
                if group:
                    cur.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(name)))
        finally:
            conn.close()
        created.append(name)
        return login_url(database_url, name, password)

    yield make
    conn = psycopg2.connect(pg_admin_url)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for name in created:
                cur.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
    finally:
        conn.close()


def user_of(url: str) -> str:
    return urlparse(url).username


def sqlstate_of(url: str, statement: str) -> str | None:
    """The SQLSTATE `statement` fails with when run by the user of `url` (None: it worked)."""
    try:
        query(url, statement)
    except psycopg2.Error as exc:
        return exc.pgcode
    return None


INSUFFICIENT_PRIVILEGE = "42501"  # SQLSTATE insufficient_privilege


def counts(url: str) -> dict[str, int]:
    return {t: query(url, f"SELECT count(*) FROM {t}")[0][0] for t in ("customer", "destination", "booking")}


_secret_numbers = itertools.count(1)


def create_secret(value: str) -> str:
    name = f"waddle/test/{os.getpid()}/{next(_secret_numbers)}"
    boto3.client("secretsmanager").create_secret(Name=name, SecretString=value)
    return name


def rds_secret(url: str, **changes) -> str:
    """The Secrets Manager JSON of an RDS database for the user and database of `url`."""
    parts = urlparse(url)
    secret = {"engine": "postgres", "username": unquote(parts.username), "password": unquote(parts.password),
              "host": parts.hostname, "port": parts.port, "dbname": parts.path.lstrip("/")}
    return json.dumps({**secret, **changes})


# ---------------------------------------------------------------------------------------
# Roles and privileges (travel.sql)


def test_security_group_roles_exist_and_cannot_log_in(schema_db):
    rows = query(schema_db, "SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname LIKE 'travel\\_%' ORDER BY 1")
    assert rows == [("travel_loader", False), ("travel_reader", False)]


def grants(url: str, grantee: str) -> dict[str, set[str]]:
    rows = query(
        url,
        "SELECT table_name, privilege_type FROM information_schema.role_table_grants "
        "WHERE grantee = %s AND table_schema = current_schema()",
        (grantee,),
    )
    found: dict[str, set[str]] = {}
    for table, privilege in rows:
        found.setdefault(table, set()).add(privilege)
    return found


def test_security_group_role_privileges_are_exactly_these_even_after_a_hand_grant(schema_db):
    # A hand edit (or an older travel.sql) granted too much: running travel.sql again undoes it.
    query(schema_db, "GRANT DELETE, TRUNCATE ON booking TO travel_loader")
    query(schema_db, "GRANT INSERT ON customer TO travel_reader")
    apply_schema(schema_db)

    assert grants(schema_db, "travel_loader") == LOADER_GRANTS
    assert grants(schema_db, "travel_reader") == {t: {"SELECT"} for t in TABLES}
    sequence = query(schema_db, "SELECT pg_get_serial_sequence('load_run', 'run_id')")[0][0]
    usage = query(schema_db, "SELECT has_sequence_privilege('travel_loader', %s, 'USAGE'), "
                             "has_sequence_privilege('travel_reader', %s, 'USAGE')", (sequence, sequence))
    assert usage == [(True, False)]


def test_security_public_has_no_table_privilege(schema_db):
    query(schema_db, "GRANT SELECT ON customer TO PUBLIC")  # the personal data, opened by mistake
    apply_schema(schema_db)

    assert grants(schema_db, "PUBLIC") == {}
    for table in ALL_TABLES:
        for privilege in ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"):
            assert query(schema_db, "SELECT has_table_privilege('public', %s, %s)", (table, privilege)) == [(False,)]
    assert query(schema_db, "SELECT has_schema_privilege('public', current_schema(), 'CREATE')") == [(False,)]


def test_security_user_without_group_role_reads_nothing(schema_db, login_user):
    nobody = login_user(schema_db, None)
    assert sqlstate_of(nobody, "SELECT * FROM customer") == INSUFFICIENT_PRIVILEGE
    assert sqlstate_of(nobody, "CREATE TABLE intruder (x int)") == INSUFFICIENT_PRIVILEGE


def test_security_loader_can_load_but_not_drop_truncate_delete_or_create(schema_db, sample_dir, login_user,
                                                                        monkeypatch, tmp_path):
    loader = login_user(schema_db, "travel_loader")
    monkeypatch.setenv("DATABASE_URL", loader)

    assert load_stage.main(["--data-dir", str(sample_dir)]) == 0
    # Another rejects folder: it cleanses again (the update path), changing nothing.
    assert load_stage.main(["--data-dir", str(sample_dir), "--rejects-dir", str(tmp_path / "again")]) == 0
    assert load_stage.main(["--data-dir", str(sample_dir), "--rejects-dir", str(tmp_path / "again")]) == 0
    assert query(schema_db, "SELECT reused_run FROM load_run ORDER BY run_id") == [(None,), (None,), (2,)]

    loaded = counts(schema_db)
    assert min(loaded.values()) > 0
    assert query(schema_db, "SELECT DISTINCT loaded_by FROM load_run") == [(user_of(loader),)]
    for statement in ("DROP TABLE booking", "TRUNCATE booking", "DELETE FROM booking",
                      "CREATE TABLE intruder (x int)", "ALTER TABLE customer ADD COLUMN x int",
                      "DELETE FROM load_run_table"):
        assert sqlstate_of(loader, statement) == INSUFFICIENT_PRIVILEGE, statement
    assert counts(schema_db) == loaded


def test_security_loader_cannot_set_tables_version_but_its_writes_count_even_behind_a_temp_table(
        schema_db, login_user):
    """A loader that set the version back could make the next load take an old outcome
    instead of repairing its edits. Its writes bump the version through the triggers, and a
    TEMP table named tables_version (which comes first on a search_path that does not name
    pg_temp) does not catch the bump."""
    loader = login_user(schema_db, "travel_loader")
    version = "SELECT version FROM tables_version"
    before = query(schema_db, version)[0][0]

    assert sqlstate_of(loader, "UPDATE tables_version SET version = 0") == INSUFFICIENT_PRIVILEGE
    conn = psycopg2.connect(loader)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE tables_version (one_row boolean, version bigint)")
            cur.execute("INSERT INTO tables_version VALUES (true, 0)")
            cur.execute("INSERT INTO destination VALUES (990, 'Nowhere', 'Noland', 'Winter')")
            cur.execute("UPDATE destination SET popular_season = 'Summer' WHERE destination_id = 990")
            cur.execute("SELECT version FROM pg_temp.tables_version")
            shadow = cur.fetchone()[0]
    finally:
        conn.close()

    assert shadow == 0
    assert query(schema_db, version)[0][0] == before + 2


def test_security_reader_can_export_but_not_write(schema_db, sample_dir, s3_bucket, login_user, monkeypatch):
    assert load_stage.main(["--data-dir", str(sample_dir)]) == 0
    loaded = counts(schema_db)
    reader = login_user(schema_db, "travel_reader")
    monkeypatch.setenv("DATABASE_URL", reader)

    assert export_stage.main(["--date", DAY]) == 0

    manifest = json.loads(boto3.client("s3").get_object(Bucket=s3_bucket, Key=f"{DAY}/_manifest.json")["Body"].read())
    assert {t: manifest["tables"][t]["rows"] for t in ("customer", "destination", "booking")} == loaded
    for statement in ("INSERT INTO destination VALUES (999, 'X', 'Y', 'Spring')", "DELETE FROM booking",
                      "UPDATE customer SET phone = NULL", "TRUNCATE booking", "DROP TABLE booking"):
        assert sqlstate_of(reader, statement) == INSUFFICIENT_PRIVILEGE, statement
    assert load_stage.main(["--data-dir", str(sample_dir)]) == 1  # the reader cannot load either
    assert counts(schema_db) == loaded


def test_security_travel_sql_as_database_owner_without_createrole(schema_db, pg_admin_url, login_user):
    # The group roles exist (schema_db's run as superuser made sure): the owner still creates
    # the schema, grants the roles their privileges, and says it created no role.
    dbname = f"waddle_owner_{os.getpid()}_{next(_role_numbers)}"
    owner = login_user(with_database(pg_admin_url, dbname), None)
    admin = psycopg2.connect(pg_admin_url)
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(dbname), sql.Identifier(user_of(owner))))
        result = run_psql(owner, REPO / "travel.sql")
        again = run_psql(owner, REPO / "travel.sql")
        owner_grants = grants(owner, "travel_loader")
    finally:
        with admin.cursor() as cur:
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))
        admin.close()

    assert result.returncode == 0 and again.returncode == 0, result.stderr + again.stderr
    assert f"NOTICE:  roles skipped: {user_of(owner)} may not create roles (no CREATEROLE)." in result.stderr
    assert owner_grants == LOADER_GRANTS


@pytest.mark.slow
def test_security_travel_sql_without_createrole_on_a_cluster_without_the_roles():
    """On a server where the roles do not exist and the user may not create them: the
    schema is still created, nothing is granted, and the NOTICE names the skipped roles."""
    folder = Path(tempfile.mkdtemp(prefix="waddle-pg-roles-"))
    server = EmbeddedPostgres(folder / "data").start()
    try:
        query(server.url(), "CREATE ROLE owner_no_createrole LOGIN PASSWORD %s", (STRONG,))
        admin = psycopg2.connect(server.url())
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("CREATE DATABASE travel OWNER owner_no_createrole")
        admin.close()
        owner = server.url("travel", "owner_no_createrole", STRONG)

        result = run_psql(owner, REPO / "travel.sql")

        assert result.returncode == 0, result.stderr
        assert ("NOTICE:  roles skipped: owner_no_createrole may not create roles (no CREATEROLE). "
                "travel_loader and travel_reader not created and not granted") in result.stderr
        assert query(owner, "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'travel\\_%'") == [(0,)]
        tables = query(owner, "SELECT table_name FROM information_schema.tables "
                              "WHERE table_schema = 'public' ORDER BY 1")
        assert [t for (t,) in tables] == sorted(ALL_TABLES)
        assert grants(owner, "PUBLIC") == {}
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# Credentials from AWS Secrets Manager


def test_security_credentials_come_from_the_secret(schema_db, sample_dir, login_user, aws, monkeypatch):
    loader = login_user(schema_db, "travel_loader")
    monkeypatch.setenv("DB_SECRET_ID", create_secret(rds_secret(loader)))
    # The secret wins over whatever else is configured.
    monkeypatch.setenv("DATABASE_URL", f"postgresql://nobody:wrong@127.0.0.1:{free_port()}/nowhere")
    monkeypatch.setenv("STRICT_SECURITY", "1")  # its password is strong: no refusal

    assert load_stage.main(["--data-dir", str(sample_dir)]) == 0

    assert query(schema_db, "SELECT loaded_by FROM load_run") == [(user_of(loader),)]
    assert min(counts(schema_db).values()) > 0


def test_security_secret_with_only_username_and_password_uses_the_rest_of_the_environment(
        schema_db, login_user, aws, monkeypatch):
    # RDS-managed master secrets hold only username and password.
    loader = login_user(schema_db, "travel_loader")
    monkeypatch.setenv("DATABASE_URL", login_url(schema_db, "nobody"))
    monkeypatch.setenv("DB_SECRET_ID", create_secret(rds_secret(loader, host=None, port=None, dbname=None)))

    conn = common.connect_db("test")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user, current_database()")
            assert cur.fetchone() == (user_of(loader), urlparse(schema_db).path.lstrip("/"))
    finally:
        conn.close()


@pytest.mark.parametrize(
    "value, expected",
    [
        (None, "does not exist in this account and region"),
        ("Leak-Canary-not-json {", "is not a JSON object; expected the RDS format"),
        (json.dumps({"username": "etl"}), "lacks password"),
        (json.dumps(["Leak-Canary-list"]), "is not a JSON object"),
    ],
    ids=["missing", "not-json", "no-password", "not-an-object"],
)
def test_security_bad_secret_is_one_config_error_line(sample_dir, aws, monkeypatch, capsys, value, expected):
    name = create_secret(value) if value is not None else "waddle/test/never-created"
    monkeypatch.setenv("DB_SECRET_ID", name)

    assert load_stage.main(["--data-dir", str(sample_dir)]) == 2

    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("transform_load_csv_data: error: ") and expected in err
    assert name in err and "Leak-Canary" not in err


def test_security_secret_values_are_redacted(aws):
    password = "Pw-with-@:/%-" + secrets.token_hex(12)
    payload = json.dumps({"username": "etl", "password": password, "host": "db.example", "port": 5432})
    name = create_secret(payload)

    common.read_database_secret(name)

    text = f"payload {payload} raw {password} encoded {quote(password, safe='')}"
    assert password not in common.redact(text) and quote(password, safe="") not in common.redact(text)
    assert payload not in common.redact(text)


# ---------------------------------------------------------------------------------------
# Password check, STRICT_SECURITY, PGSSLMODE


@pytest.mark.parametrize(
    "password, weakness",
    [
        ("short1", "shorter than 32 characters"),
        ("a1" * 15 + "b", "shorter than 32 characters"),  # 31
        ("a1" * 16, None),  # exactly 32
        ("letters-only-" + "x" * 30, "not a mix of letters and digits"),
        ("1234567890" * 4, "not a mix of letters and digits"),
        ("-_-_" * 10, "not a mix of letters and digits"),
        (STRONG, None),
    ],
)
def test_security_password_weakness(password, weakness):
    assert common.password_weakness(password) == weakness


def test_security_no_password_is_not_judged():
    common.check_password(None, strict=True)  # certificate, peer or ~/.pgpass authentication


@pytest.mark.parametrize("how", ["url", "pgpassword"])
def test_security_weak_password_warns_in_one_line_and_loads(schema_db, sample_dir, login_user, monkeypatch,
                                                           capsys, how):
    weak = "tooshort-pw"
    loader = login_user(schema_db, "travel_loader", password=weak)
    if how == "url":
        monkeypatch.setenv("DATABASE_URL", loader)
    else:
        monkeypatch.setenv("DATABASE_URL", login_url(schema_db, user_of(loader)))
        monkeypatch.setenv("PGPASSWORD", weak)

    assert load_stage.main(["--data-dir", str(sample_dir)]) == 0

    warnings = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(warnings) == 1
    assert warnings[0].endswith("the database password is shorter than 32 characters; use a generated password "
                                "of 32+ letters and digits (STRICT_SECURITY=1 would refuse it)")
    assert weak not in warnings[0]
    assert min(counts(schema_db).values()) > 0


@pytest.mark.parametrize("stage", ["load", "export"])
def test_security_strict_security_refuses_a_weak_password(schema_db, sample_dir, login_user, s3_bucket,
                                                          monkeypatch, capsys, stage):
    weak = "letters-only-password-but-long-enough"
    group = "travel_loader" if stage == "load" else "travel_reader"
    monkeypatch.setenv("DATABASE_URL", login_user(schema_db, group, password=weak))
    monkeypatch.setenv("STRICT_SECURITY", "1")
    name = {"load": "transform_load_csv_data", "export": "batch_transfer_data_to_cloud_storage"}[stage]

    if stage == "load":
        code = load_stage.main(["--data-dir", str(sample_dir)])
    else:
        code = export_stage.main(["--date", DAY])

    assert code == 2
    err = capsys.readouterr().err
    assert err == (f"{name}: error: the database password is not a mix of letters and digits; STRICT_SECURITY=1 "
                   "refuses to use it: use a generated password of 32+ letters and digits\n")
    assert counts(schema_db) == {"customer": 0, "destination": 0, "booking": 0}
    assert "Contents" not in boto3.client("s3").list_objects_v2(Bucket=s3_bucket)


def test_security_strict_security_must_be_a_flag(sample_dir, monkeypatch, capsys):
    monkeypatch.setenv("STRICT_SECURITY", "maybe")
    assert load_stage.main(["--data-dir", str(sample_dir)]) == 2
    assert "STRICT_SECURITY must be 1 or 0" in capsys.readouterr().err


@pytest.mark.parametrize("how", ["url", "libpq", "secret"])
def test_security_pgsslmode_is_honoured(schema_db, login_user, aws, monkeypatch, how):
    # The test server has no TLS: PGSSLMODE=require must make the connection fail, whichever
    # way the credentials come, and =disable must work. Nothing may override it.
    loader = login_user(schema_db, "travel_loader")
    if how == "url":
        monkeypatch.setenv("DATABASE_URL", loader)
    elif how == "libpq":
        for key, value in libpq_env(loader).items():
            monkeypatch.setenv(key, value)
    else:
        monkeypatch.setenv("DB_SECRET_ID", create_secret(rds_secret(loader)))

    monkeypatch.setenv("PGSSLMODE", "require")
    with pytest.raises(common.PipelineError, match="SSL"):
        common.connect_db("test")

    monkeypatch.setenv("PGSSLMODE", "disable")
    common.connect_db("test").close()


# ---------------------------------------------------------------------------------------
# .env and .gitignore


def test_security_env_file_readable_by_others_warns(sample_dir, tmp_path, capsys):
    env_file = tmp_path / ".env"
    urls = "".join(f"{t.upper()}_CSV_URL={sample_dir / f'{t}.csv'}\n" for t in ("customer", "destination", "booking"))
    env_file.write_text(urls + f"DOWNLOAD_DIR={tmp_path / 'out'}\n")
    download = __import__("download_dataset")

    try:
        env_file.chmod(0o644)
        assert download.main([]) == 0
        assert ".env is readable by other users; run: chmod 600 .env" in capsys.readouterr().err

        env_file.chmod(0o600)
        assert download.main([]) == 0
        assert "readable" not in capsys.readouterr().err
    finally:  # load_env put them into os.environ; the next test must not inherit them
        for line in env_file.read_text().splitlines():
            os.environ.pop(line.split("=", 1)[0], None)


@pytest.mark.parametrize(
    "path, ignored",
    [(".env", True), ("prod.env", True), ("download_dataset/customer.csv", True), ("rejects/booking_rejects.csv", True),
     (".local/postgres/PG_VERSION", True), ("run.log", True), ("env.example", False), ("lambda/env.example", False)],
)
def test_security_gitignore_covers_secrets_data_rejects_and_local_state(path, ignored):
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    result = subprocess.run(["git", "check-ignore", "--no-index", "-q", path], cwd=REPO, timeout=30)
    assert result.returncode == (0 if ignored else 1)


# ---------------------------------------------------------------------------------------
# Leak test: every stage, success and failure, plain and --verbose, in a subprocess

# Random per session, so no fixed string could be special-cased; URL-special characters in
# the password test every place that parses or quotes a connection string.
PASSWORD_TOKEN = secrets.token_hex(12)
SECRET_KEY_TOKEN = secrets.token_hex(12)
CANARY_PASSWORD = f"Leak-Canary-Pw-@:/%-{PASSWORD_TOKEN}"
CANARY_SECRET_KEY = f"Leak-Canary-Secret-{SECRET_KEY_TOKEN}"
CANARY_TOKENS = (PASSWORD_TOKEN, SECRET_KEY_TOKEN)

# Runs a stage as __main__ and records the argument list of every process it starts.
RUNNER = r"""
import os, runpy, sys
log = open(os.environ["WADDLE_TEST_SPAWN_LOG"], "a")
def record(event, args):
    if event in ("subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.system"):
        # Everything but the environment, which children inherit by design.
        log.write(f"{event} {[a for a in args if not hasattr(a, 'keys')]!r}\n")
        log.flush()
sys.addaudithook(record)
script = sys.argv[1]
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(script))
runpy.run_path(script, run_name="__main__")
"""

SCRIPTS = {
    "psql": REPO / "waddle_common",  # travel.sh's schema stage: python -m waddle_common psql
    "download": REPO / "download_dataset.py",
    "load": REPO / "transform_load_csv_data.py",
    "export": REPO / "batch_transfer_data_to_cloud_storage.py",
    "lambda": REPO / "lambda" / "lambda_function.py",
}


def server_log(pg_admin_url: str) -> Path | None:
    """The embedded server's log file (pg_ctl -l), when it is ours and readable."""
    try:
        datadir = query(pg_admin_url, "SHOW data_directory")[0][0]
    except psycopg2.Error:
        return None
    path = Path(datadir) / "server.log"
    return path if path.is_file() and os.access(path, os.R_OK) else None


def run_leaky(stage: str, args: list[str], env: dict[str, str], cwd: Path) -> tuple[int, str, str, str]:
    """Run `stage` in a subprocess; return its exit code, everything it left behind to search,
    its stdout and its stderr."""
    spawn_log = cwd / "spawned.txt"
    spawn_log.touch()
    argv = [sys.executable, "-c", RUNNER, str(SCRIPTS[stage]), *args]
    result = subprocess.run(argv, env={**env, "WADDLE_TEST_SPAWN_LOG": str(spawn_log)}, cwd=cwd,
                            capture_output=True, text=True, timeout=300)
    files = "\n".join(p.read_text(errors="replace") for p in sorted(cwd.rglob("*")) if p.is_file() and p.name != ".env")
    everything = "\n".join([" ".join(argv), result.stdout, result.stderr, files])
    return result.returncode, everything, result.stdout, result.stderr


def assert_no_canary(text: str) -> None:
    for token in CANARY_TOKENS:
        where = text.find(token)
        assert where < 0, f"canary {token} leaked:\n{text[max(0, where - 400):where + 200]}"


@pytest.fixture
def leak_setup(schema_db, sample_dir, s3_bucket, login_user, pg_admin_url, tmp_path):
    """A database with the schema and two users whose password is the canary; the sample
    data served as files; S3 at moto with the canary as AWS secret key."""
    loader = login_user(schema_db, "travel_loader", password=CANARY_PASSWORD)
    reader = login_user(schema_db, "travel_reader", password=CANARY_PASSWORD)
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL",) and not k.startswith("PG")}
    base.update({"AWS_SECRET_ACCESS_KEY": CANARY_SECRET_KEY, "S3_BUCKET_NAME": s3_bucket, "PGCONNECT_TIMEOUT": "5",
                 "LOG_LEVEL": "DEBUG"})
    base.update({f"{t.upper()}_CSV_URL": (sample_dir / f"{t}.csv").as_uri()
                 for t in ("customer", "destination", "booking")})
    log = server_log(pg_admin_url)
    start = log.stat().st_size if log else 0
    yield {"loader": loader, "reader": reader, "base": base, "schema_db": schema_db, "sample_dir": sample_dir,
           "work": tmp_path / "work"}
    if log:  # the server's own log: failed logins are recorded there, never with the password
        with open(log, "rb") as fh:
            fh.seek(start)
            assert_no_canary(fh.read().decode("utf-8", "replace"))


def test_security_leak_runner_records_the_argv_of_children(tmp_path):
    child = tmp_path / "child.py"
    child.write_text("import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'pass', 'marker-arg'])\n")
    SCRIPTS["child"] = child
    try:
        code, *_ = run_leaky("child", [], dict(os.environ), tmp_path)
    finally:
        del SCRIPTS["child"]
    spawned = (tmp_path / "spawned.txt").read_text()
    assert code == 0 and "subprocess.Popen" in spawned and "marker-arg" in spawned


@pytest.mark.slow
def test_security_leak_no_stage_prints_or_passes_on_a_secret(leak_setup):
    """Thirteen runs in four phases (the export needs the load, the Lambda the export); the
    runs of a phase are independent and run side by side. --verbose where it matters: its
    tracebacks and debug logs are where secrets usually slip out."""
    s = leak_setup
    loader, reader = s["loader"], s["reader"]
    wrong_password = login_url(s["schema_db"], user_of(loader), CANARY_PASSWORD + "-wrong")
    unreachable = login_url(f"postgresql://127.0.0.1:{free_port()}/travel", "etl", CANARY_PASSWORD)
    secret_ok = create_secret(rds_secret(loader))
    data = ["--data-dir", str(s["sample_dir"])]
    day = ["--date", DAY]
    phases = [
        [  # (name, stage, args, extra environment, expected exit code)
            ("psql ok", "psql", ["--verbose", "psql", "--", "-X", "-c", "SELECT count(*) FROM customer"],
             {"DATABASE_URL": reader}, 0),
            ("psql travel.sql, wrong password", "psql",
             ["--verbose", "psql", "--", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-f", str(REPO / "travel.sql")],
             {"DATABASE_URL": wrong_password}, 2),
            ("download ok", "download", ["--verbose"], {}, 0),
            ("download with credentials in an unreachable URL", "download", ["--verbose"],
             {"BOOKING_CSV_URL": f"http://etl:{quote(CANARY_PASSWORD, safe='')}@127.0.0.1:{free_port()}/booking.csv",
              "DOWNLOAD_RETRIES": "0"}, 1),
            ("load wrong password", "load", data + ["--verbose"], {"DATABASE_URL": wrong_password}, 1),
            ("load unreachable host, PGPASSWORD", "load", data + ["--verbose"], libpq_env(unreachable), 1),
            ("export wrong password", "export", day, {"DATABASE_URL": wrong_password}, 1),
            ("export bad bucket", "export", day + ["--verbose"],
             {"DATABASE_URL": reader, "S3_BUCKET_NAME": "waddle-no-such-bucket"}, 1),
            ("lambda bad bucket", "lambda", day + ["--verbose"], {"S3_BUCKET_NAME": "waddle-no-such-bucket"}, 1),
        ],
        [
            ("load ok", "load", data + ["--verbose"], {"DATABASE_URL": loader}, 0),
            ("load from secret", "load", data + ["--verbose"], {"DB_SECRET_ID": secret_ok}, 0),
        ],
        [("export ok", "export", day + ["--verbose"], {"DATABASE_URL": reader}, 0)],
        [("lambda ok", "lambda", day + ["--verbose"], {}, 0)],
    ]

    def run_case(case):
        name, stage, args, extra, _ = case
        work = s["work"] / name.replace(" ", "-").replace(",", "")
        work.mkdir(parents=True)
        return run_leaky(stage, args, {**s["base"], **extra}, work)

    with ThreadPoolExecutor(max_workers=3) as pool:
        for phase in phases:
            for (name, _, _, _, expected), (code, everything, *_) in zip(phase, pool.map(run_case, phase)):
                assert code == expected, f"{name}: exit {code}\n{everything[-3000:]}"
                assert_no_canary(everything)
    assert min(counts(s["schema_db"]).values()) > 0


def test_security_leak_env_file_credentials_are_not_printed(leak_setup):
    # The same credentials read from a .env file that others may read (a warning, not a leak).
    s = leak_setup
    work = s["work"] / "dotenv"
    work.mkdir(parents=True)
    wrong = login_url(s["schema_db"], user_of(s["loader"]), CANARY_PASSWORD + "-wrong")
    (work / ".env").write_text(f"DATABASE_URL={wrong}\nAWS_SECRET_ACCESS_KEY={CANARY_SECRET_KEY}\n")
    (work / ".env").chmod(0o644)
    env = {k: v for k, v in s["base"].items() if k != "AWS_SECRET_ACCESS_KEY"}

    code, everything, *_ = run_leaky("load", ["--data-dir", str(s["sample_dir"]), "--verbose"], env, work)

    assert code == 1 and ".env is readable by other users" in everything
    assert_no_canary(everything)


# ---------------------------------------------------------------------------------------
# A password with special characters written into DATABASE_URL as it is
#
# libpq reads postgresql://etl:Secr3tP@ssw0rd@host/db with the host "ssw0rd@host", and a /
# in the password makes it read the text before the / as the port; its messages then quote
# those pieces. The pipeline refuses such a URL in one line that quotes none of it.


# The line every stage prints for such a URL: the product, so spelled out here.
INVALID_URL = ("DATABASE_URL is not a valid PostgreSQL URL: percent-encode special characters in the password"
               " (@ as %40, / as %2F, % as %25)")
OTHER_SCHEME = "DATABASE_URL must start with postgresql:// (or postgres://)"


def libpq_decoded(text: str) -> str | None:
    """`text` with its %XX escapes decoded as libpq decodes a URL; None where libpq refuses it
    (an escape that is not two hex digits, %00, or bytes that are not UTF-8)."""
    raw, out, i = text.encode(), bytearray(), 0
    while i < len(raw):
        if raw[i] == ord("%"):
            digits = raw[i + 1:i + 3]
            if len(digits) < 2 or not all(chr(d) in "0123456789abcdefABCDEF" for d in digits) or digits == b"00":
                return None
            out.append(int(digits, 16))
            i += 3
        else:
            out.append(raw[i])
            i += 1
    try:
        return out.decode()
    except UnicodeDecodeError:
        return None


USERS = st.from_regex(r"[a-z_][a-z0-9_]{0,12}", fullmatch=True)
HOSTS = st.sampled_from(["127.0.0.1", "localhost", "db.example.com", "db-1.internal"])
PORTS = st.integers(min_value=1, max_value=65535)
DBNAMES = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
# Any text an environment variable can hold, rich in the characters URLs treat specially.
PASSWORDS = st.text(
    alphabet=st.one_of(st.sampled_from("@/:#?%[]&=,;+ \t'\"\\"), st.sampled_from("0123456789abcdefGHIJ"),
                       st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")),
    min_size=1, max_size=40,
)


@settings(max_examples=500, deadline=None)
@given(user=USERS, password=PASSWORDS, host=HOSTS, port=PORTS, dbname=DBNAMES)
def test_security_database_url_is_read_as_written_or_refused(user, password, host, port, dbname):
    """Unescaped, a password is read exactly as written (its %XX decoded) or the URL is refused
    with the one fixed line: never split into user, host, port or database name."""
    url = f"postgresql://{user}:{password}@{host}:{port}/{dbname}"
    env = {"DATABASE_URL": url}
    try:
        keywords = common.database_url_keywords(url)
    except common.ConfigError as exc:
        assert str(exc) == INVALID_URL
        with pytest.raises(common.ConfigError) as described:
            common.describe_database(env)
        assert str(described.value) == INVALID_URL
        assert {"@", "/", "%"} & set(password), "refused a URL libpq reads as meant"
        return
    assert "@" not in password and "/" not in password
    assert keywords == {"user": user, "password": libpq_decoded(password), "host": host, "port": str(port),
                        "dbname": dbname}
    assert common.describe_database(env) == f"{user}@{host}:{port}/{dbname}"


@settings(max_examples=300, deadline=None)
@given(user=USERS, password=PASSWORDS, host=HOSTS, port=PORTS, dbname=DBNAMES)
def test_security_percent_encoded_password_is_read_exactly_and_redacted(user, password, host, port, dbname):
    encoded = quote(password, safe="")
    url = f"postgresql://{user}:{encoded}@{host}:{port}/{dbname}"
    env = {"DATABASE_URL": url}

    assert common.database_url_keywords(url)["password"] == password
    assert common.describe_database(env) == f"{user}@{host}:{port}/{dbname}"
    if len(password) >= 4 and "*" not in password:  # shorter values are not masked (too common)
        masked = common.redact(f"failed: {password} | {encoded} | {url}", env)
        assert password not in masked and encoded not in masked and url not in masked


@settings(max_examples=300, deadline=None)
@given(user=USERS, password=PASSWORDS, host=HOSTS, port=PORTS, dbname=DBNAMES)
def test_security_redact_masks_an_unescaped_password_that_is_accepted(user, password, host, port, dbname):
    url = f"postgresql://{user}:{password}@{host}:{port}/{dbname}"
    env = {"DATABASE_URL": url}
    try:
        decoded = common.database_url_keywords(url)["password"]
    except common.ConfigError:
        return  # refused before anything is printed: the test above
    masked = common.redact(f"failed: {password} | {decoded} | {url}", env)
    for value in {password, decoded, url}:
        if len(value) >= 4 and "*" not in value:
            assert value not in masked


def canary_piece(size: int = 8) -> str:
    # Letters no hex digest, timestamp, path or word here contains, so any four characters of
    # a canary found in an output came from the password.
    return "".join(secrets.choice("ghjkmnpqrstvwxyzGHJKMNPQRSTVWXYZ") for _ in range(size))


def assert_no_fragment(password: str, text: str) -> None:
    """No four consecutive characters of `password` (so no longer piece either) in `text`."""
    for start in range(len(password) - 3):
        fragment = password[start:start + 4]
        where = text.find(fragment)
        assert where < 0, f"{fragment!r} of the password leaked:\n{text[max(0, where - 300):where + 200]}"


STAGE_NAMES = {"psql": "psql", "load": "transform_load_csv_data", "export": "batch_transfer_data_to_cloud_storage"}


def stage_args(stage: str, s: dict) -> list[str]:
    return {
        "psql": ["psql", "--", "-X", "-At", "-c", "SELECT current_user"],
        "load": ["--data-dir", str(s["sample_dir"])],
        "export": ["--date", DAY],
    }[stage]


# (id, password: pieces p1, p2, p3 are random canary letters, how the URL is written)
MALFORMED_URLS = [
    ("at", "{p1}7@{p2}3{p3}", "postgresql"),
    ("two-ats", "{p1}@{p2}@{p3}9", "postgresql"),
    ("slash", "{p1}7/{p2}3{p3}", "postgresql"),
    ("digits-then-slash", "7/{p1}3{p2}", "postgresql"),  # libpq: port 7, database "<rest>@host:port/db"
    ("slash-then-at", "{p1}/{p2}@{p3}", "postgresql"),
    ("at-then-slash", "{p1}@{p2}/{p3}", "postgresql"),
    ("bad-percent-escape", "{p1}%zz{p2}", "postgresql"),
    ("percent-at-the-end", "{p1}7{p2}%", "postgresql"),
    ("percent-00", "{p1}%00{p2}", "postgresql"),
    ("space-at-and-colon", "{p1} :@{p2}", "postgresql"),
    ("keywords-unquoted-space", "{p1}7 {p2}3", "keywords"),
    ("other-scheme", "{p1}@{p2}/{p3}", "postgresql+psycopg2"),
]


@pytest.mark.slow
def test_security_malformed_database_url_is_one_line_and_leaks_no_fragment(leak_setup, pg_admin_url):
    """Every stage that connects, and `python -m waddle_common psql`, refuses each malformed URL
    with the same line (exit 2), pointed at the real server; no four characters of the
    password appear in any output, file, child's argv or the server's log."""
    s = leak_setup
    target = urlparse(s["schema_db"])
    user = user_of(s["loader"])
    log = server_log(pg_admin_url)
    log_start = log.stat().st_size if log else 0
    cases = []
    for name, pattern, form in MALFORMED_URLS:
        password = pattern.format(p1=canary_piece(), p2=canary_piece(), p3=canary_piece())
        if form == "keywords":
            url = (f"host={target.hostname} port={target.port} dbname={target.path.lstrip('/')} user={user} "
                   f"password={password}")
            message = INVALID_URL
        else:
            url = f"{form}://{user}:{password}@{target.hostname}:{target.port}{target.path}"
            message = INVALID_URL if form == "postgresql" else OTHER_SCHEME
        for stage in ("psql", "load", "export"):
            cases.append((name, stage, password, url, message))

    def run_case(case):
        name, stage, _, url, _ = case
        work = s["work"] / f"malformed-{name}-{stage}"
        work.mkdir(parents=True)
        return run_leaky(stage, ["--verbose"] * (stage == "load") + stage_args(stage, s),
                         {**s["base"], "DATABASE_URL": url}, work)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(run_case, cases))
    for (name, stage, password, _, message), (code, everything, stdout, stderr) in zip(cases, results):
        assert_no_fragment(password, everything)
        assert code == 2, f"{name} {stage}: exit {code}\n{stderr}"
        assert stdout == ""
        line = f"{STAGE_NAMES[stage]}: error: {message}"
        if stage == "load":  # --verbose: the traceback, then the same line
            assert stderr.splitlines()[-1] == line, f"{name} {stage}"
        else:
            assert stderr == line + "\n", f"{name} {stage}"
    if log:
        with open(log, "rb") as fh:
            fh.seek(log_start)
            server_text = fh.read().decode("utf-8", "replace")
        for _, _, password, _, _ in cases:
            assert_no_fragment(password, server_text)
    assert counts(s["schema_db"]) == {"customer": 0, "destination": 0, "booking": 0}


@pytest.mark.slow
def test_security_unescaped_password_libpq_reads_as_meant_connects_and_leaks_nothing(leak_setup, login_user):
    """: # ? , [ ] and spaces in the password, unescaped: libpq reads the URL as meant, so it
    connects (a wrong password fails in one line); nothing of the password is printed."""
    s = leak_setup
    target = urlparse(s["schema_db"])
    password = f"{canary_piece()}7:{canary_piece()}#3?{canary_piece()} ,[{canary_piece()}]9"
    loader = user_of(login_user(s["schema_db"], "travel_loader", password=password))
    reader = user_of(login_user(s["schema_db"], "travel_reader", password=password))

    def url(user: str, secret: str) -> str:
        return f"postgresql://{user}:{secret}@{target.hostname}:{target.port}{target.path}"

    cases = [  # (stage, DATABASE_URL, expected exit)
        ("psql", url(reader, password), 0),
        ("psql", url(reader, password + "x"), 2),
        ("load", url(loader, password + "x"), 1),
        ("export", url(reader, password + "x"), 1),
        ("load", url(loader, password), 0),
    ]
    results = []
    for stage, database_url, _ in cases:  # the export needs the load first: one after the other
        work = s["work"] / f"unescaped-{len(results)}-{stage}"
        work.mkdir(parents=True)
        results.append(run_leaky(stage, ["--verbose"] * (stage != "psql") + stage_args(stage, s),
                                 {**s["base"], "DATABASE_URL": database_url}, work))
    work = s["work"] / "unescaped-export"
    work.mkdir(parents=True)
    results.append(run_leaky("export", ["--verbose", "--date", DAY], {**s["base"], "DATABASE_URL": url(reader, password)},
                             work))
    cases.append(("export", url(reader, password), 0))

    for (stage, _, expected), (code, everything, stdout, stderr) in zip(cases, results):
        assert_no_fragment(password, everything)
        assert code == expected, f"{stage}: exit {code}\n{stderr}"
    assert results[0][2].strip() == reader  # psql connected as the URL's user
    assert "password authentication failed" in results[2][3]
    assert min(counts(s["schema_db"]).values()) > 0


# ---------------------------------------------------------------------------------------
# S3 and Lambda policies (lambda/template.yaml, lambda/README.md): tests/test_lambda_template.py


# local_services.py is left out: it talks only to its own moto server, with fixed local keys.
@pytest.mark.parametrize("script", [*(f"waddle_common/{m.name}" for m in sorted((REPO / "waddle_common").glob("*.py"))
                                      if m.name != "local_services.py"),
                                    "download_dataset.py", "transform_load_csv_data.py",
                                    "batch_transfer_data_to_cloud_storage.py", "lambda/lambda_function.py"])
def test_security_aws_credentials_only_from_boto3_default_chain(script):
    source = (REPO / script).read_text(encoding="utf-8")
    for keyword in ("aws_access_key_id", "aws_secret_access_key", "aws_session_token"):
        assert keyword not in source, f"{script} passes {keyword} explicitly"
