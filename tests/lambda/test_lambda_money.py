"""The export's money grammar, `[0-9]{1,16}\\.[0-9]{2}`, enforced by the Lambda whatever the
object's size and whether or not pyarrow is installed, with the same verdict: ExportCorrupt
naming the object, the data row and the value, and nothing but JSON lines on stderr.

"Without pyarrow" runs the handler in a child process where no import finds pyarrow (a finder
first on sys.meta_path refuses it before pandas is imported), as in a layer built without it.
(`sys.modules["pyarrow"] = None` is not enough: pandas 3.0 then still finds pyarrow installed,
and crashes on the None.) The CI venv without pyarrow runs these tests for real too.
"""

from __future__ import annotations

import csv
import io
import json
from decimal import Decimal

import boto3
import pytest

from .support import LAMBDA_FILE, PREFIX, FakeContext, load_lambda, put_case, run_child

VALID = [("0.00", 0), ("0.01", 1), ("99.99", 9999), ("1234.50", 123450), ("9999999999999999.99", 10**18 - 1),
         ("0000000000000001.00", 100), ("007.10", 710)]
# Refused, each for a reason: exponent, sign, decimals other than two, spaces, more than 16
# digits of units, separators, other digits, words, a newline inside the quoted value, a NUL.
MALFORMED = ["1e5", "1E2", "+5.00", "-1.00", "10.500", "10.5", " 10.00", "10.00 ", "12345678901234567.00",
             "", "1,000.00", "10,00", "١٠.٠٠", "１０.００", "NaN", "inf", "0x10", ".50", "10.", "10",
             "1_000.00",
             "$10.00", "10.00e0", "10.00\n10.00", "10.0\x00", "1" * 3_000_000 + ".00"]
# pandas before 3.1 ends a value at a NUL byte ('10.00\x00x' would read as '10.00'): an object
# holding a NUL is refused as a whole, before pandas sees it, on every layer.
IN_FILES = [value for value in MALFORMED if "\x00" not in value]
WITH_NUL = ["10.00\x00", "1.00\x00garbage", "10.0\x00"]
NUL_VERDICT = "object {key} holds a NUL byte: the export is corrupt"
LARGE = ["1e5", "1E2", "+5.00", "-1.00", "10.500", "10.5", " 10.00", "12345678901234567.00"]
LARGE_ROWS = 120_000  # the bad value comes after it: in the second chunk of 100,000 rows
MESSAGE = ("object {key} data row {row}: total_booking_value {value!r} is not money as the export writes it "
           "(digits, a point, two decimals: [0-9]{{1,16}}.[0-9]{{2}})")


def verdict(key: str, row: int, value: str) -> str:
    return MESSAGE.format(key=key, row=row, value=value[:60])


@pytest.mark.parametrize("text, cents", VALID)
def test_lambda_money_in_the_grammar_becomes_exact_cents(text, cents):
    lf = load_lambda()
    assert lf.to_cents(lf.np.array([text, text], dtype=object), "k", 1).tolist() == [cents, cents]


@pytest.mark.parametrize("value", MALFORMED, ids=[repr(v[:12]) for v in MALFORMED])
def test_lambda_money_off_the_grammar_is_refused_naming_row_and_value(value):
    lf = load_lambda()
    values = lf.np.array(["1.00", "2.00", value, "3.00"], dtype=object)
    with pytest.raises(lf.ExportCorrupt) as raised:
        lf.to_cents(values, "exports/x.csv.zip", 11)
    assert str(raised.value) == verdict("exports/x.csv.zip", 13, value)


def test_lambda_money_grammar_is_written_once():
    lf = load_lambda()
    assert lf.EXPORT_MONEY == r"[0-9]{1,16}\.[0-9]{2}"
    assert 10 ** (lf.MAX_UNIT_DIGITS + 2) - 1 == 999999999999999999  # stage 3's and travel.sql's limit, in cents
    assert LAMBDA_FILE.read_text(encoding="utf-8").count("[0-9]{{1,") == 1


def test_lambda_sums_beyond_int64_stay_exact():
    lf = load_lambda()
    totals = {}
    cents = lf.np.array([10**18 - 1] * 20, dtype=lf.np.int64)
    lf.add_sums(totals, lf.np.array([1] * 20, dtype=lf.np.int64), lf.np.ones(20, dtype=lf.np.int64), cents)
    lf.add_sums(totals, lf.np.array([1] * 20, dtype=lf.np.int64), lf.np.ones(20, dtype=lf.np.int64), cents)
    assert totals == {1: [40, 40, 40 * (10**18 - 1)]}
    assert lf.format_cents(totals[1][2]) == f"{Decimal('9999999999999999.99') * 40:.2f}"


@pytest.mark.parametrize("cents, text",
                         [(0, "0.00"), (5, "0.05"), (123450, "1234.50"), (10**20, "1000000000000000000.00")])
def test_lambda_format_cents(cents, text):
    assert load_lambda().format_cents(cents) == text


# ---------------------------------------------------------------------------------------
# Through the handler: small and large objects, with and without pyarrow

BOOKING_HEADER = "destination_id,number_of_passengers,total_booking_value\n"


def booking_csv(values: list[str], filler: int = 0) -> tuple[bytes, int]:
    """A booking CSV holding `filler` valid rows, then a row for each value; and its row count."""
    out = io.StringIO()
    out.write(BOOKING_HEADER)
    out.write("1,1,1.00\n" * filler)
    csv.writer(out, lineterminator="\n").writerows([1, 2, value] for value in values)
    return out.getvalue().encode("utf-8"), filler + len(values)


@pytest.fixture
def cases(s3_bucket, monkeypatch):
    """day -> (key, expected verdict or None): the malformed values in small and large objects,
    and valid objects, each under its own day."""
    monkeypatch.setenv("S3_PREFIX", PREFIX)
    cases, number = {}, 0

    def add(data: bytes, row: int | None, value: str | None, message: str | None = None) -> None:
        nonlocal number
        number += 1
        day = f"2030-01-{number:02d}" if number <= 28 else f"2030-02-{number - 28:02d}"
        key = put_case(s3_bucket, day, data)
        cases[day] = (key, message.format(key=key) if message else None if value is None else verdict(key, row, value))

    for value in IN_FILES:
        add(booking_csv(["1.00", value, "2.00"]), 2, value)
    for value in LARGE:
        add(booking_csv([value, "5.00"], filler=LARGE_ROWS), LARGE_ROWS + 1, value)
    for value in WITH_NUL:
        add(booking_csv(["1.00", value, "2.00"]), 2, value, NUL_VERDICT)
        add(booking_csv([value, "5.00"], filler=LARGE_ROWS), LARGE_ROWS + 1, value, NUL_VERDICT)
    add(booking_csv([v for v, _ in VALID]), None, None)
    add(booking_csv([v for v, _ in VALID], filler=250_000), None, None)
    return cases


@pytest.mark.slow
def test_lambda_money_verdicts_are_the_same_with_and_without_pyarrow(cases):
    outcomes = {}
    modes = ["without"] + (["with"] if _has_pyarrow() else [])
    for mode in modes:
        lines, stderr = run_child(mode, list(cases))
        *results, versions = lines
        assert versions["pyarrow"] is (mode == "with")
        outcomes[mode] = {r["day"]: r for r in results}
        for line in stderr.splitlines():  # the runtime's JSON records only: no loose text
            assert isinstance(json.loads(line), dict), line
        assert "Exception ignored" not in stderr and "Traceback" not in stderr
        assert stderr.count('"message": "run failed"') == sum(v is not None for _, v in cases.values())
    for day, (key, expected) in cases.items():
        got = outcomes["without"][day]
        if expected is None:
            assert "totals" in got, got
        else:
            assert (got["error"], got["message"]) == ("ExportCorrupt", expected)
    if "with" in outcomes:
        assert outcomes["with"] == outcomes["without"]


def _has_pyarrow() -> bool:
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def test_lambda_money_verdict_in_process_names_object_row_and_value(lf, s3_bucket):
    key = put_case(s3_bucket, "2030-03-01", booking_csv(["1.00", "1e5"], filler=3))
    with pytest.raises(lf.ExportCorrupt) as raised:
        lf.lambda_handler({"date": "2030-03-01"}, FakeContext())
    assert str(raised.value) == verdict(key, 5, "1e5")


def test_lambda_valid_money_through_the_handler_is_exact(lf, s3_bucket):
    put_case(s3_bucket, "2030-03-02", booking_csv([v for v, _ in VALID]))
    totals = lf.lambda_handler({"date": "2030-03-02"}, FakeContext())["totals"]
    assert totals["total_booking_value"] == f"{sum(Decimal(v) for v, _ in VALID):.2f}"
    assert totals["total_booking_value"] == lf.format_cents(sum(c for _, c in VALID))


def test_lambda_zip_member_read_in_chunks_names_rows_across_chunks(lf, s3_bucket):
    # With chunks of 3 rows, the bad value on data row 8 is in the third chunk.
    key = put_case(s3_bucket, "2030-03-03", booking_csv(["1.00"] * 7 + ["10.5"]))
    with pytest.raises(lf.ExportCorrupt) as raised:
        lf.compute_metrics(boto3.client("s3"), s3_bucket, PREFIX, "2030-03-03", chunk_rows=3)
    assert str(raised.value) == verdict(key, 8, "10.5")
