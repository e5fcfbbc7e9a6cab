"""lambda/template.yaml and the policies lambda/README.md gives for the console: cfn-lint,
least privilege on personal data (exact resources and conditions), failures that reach a
queue, the layer from its public SSM parameter; and stage 4's prefix-limited bucket check
against moto's S3 server, which the export policy's strict `s3:prefix` condition relies on.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime

import boto3
import pytest
from support import REPO

import batch_transfer_data_to_cloud_storage as stage
import transform_load_csv_data
import waddle_common

TEMPLATE = REPO / "lambda" / "template.yaml"
ATHENA_TEMPLATE = REPO / "lambda" / "athena.yaml"
README = REPO / "lambda" / "README.md"
DAY = "2026-11-26"

pytest.importorskip("cfnlint")


def load_template(path=TEMPLATE) -> dict:
    from cfnlint.decode import cfn_yaml

    return cfn_yaml.loads(path.read_text(encoding="utf-8"))


def statements_by_sid(document: dict) -> dict[str, dict]:
    """Statements by Sid, with CloudFormation's `!If [condition, statement, NoValue]` unwrapped."""
    found = {}
    for statement in document["Statement"]:
        if "Fn::If" in statement:
            statement = statement["Fn::If"][1]
        found[statement["Sid"]] = statement
    return found


def as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def sub(text: str) -> dict:
    return {"Fn::Sub": text}


def s3_arn(path: str) -> dict:
    return sub(f"arn:${{AWS::Partition}}:s3:::${{DataBucketName}}{path}")


def role_statements() -> dict[str, dict]:
    role = load_template()["Resources"]["MetricsRole"]["Properties"]
    assert len(role["Policies"]) == 1
    return statements_by_sid(role["Policies"][0]["PolicyDocument"])


def export_statements() -> dict[str, dict]:
    return statements_by_sid(load_template()["Resources"]["ExportPolicy"]["Properties"]["PolicyDocument"])


# ---------------------------------------------------------------------------------------
# cfn-lint


@pytest.mark.parametrize("template", [TEMPLATE, ATHENA_TEMPLATE], ids=lambda path: path.name)
def test_lambda_template_passes_cfn_lint(template):
    # cfn-lint 1.x has no `python -m cfnlint`; its console script runs cfnlint.runner.main.
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from cfnlint.runner import main; sys.argv[0] = 'cfn-lint'; main()",
         str(template)],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------------------------------
# The function


def test_lambda_template_function_runtime_code_logging_and_settings():
    template = load_template()
    function = template["Resources"]["MetricsFunction"]["Properties"]
    assert function["Handler"] == "lambda_function.lambda_handler"
    assert function["Runtime"] == "python3.12" and function["Architectures"] == ["x86_64"]
    assert set(function["Code"]) == {"S3Bucket", "S3Key"}
    assert function["Role"] == {"Fn::GetAtt": ["MetricsRole", "Arn"]}
    # The runtime renders the logging module's records as JSON, filtered at LogLevel.
    assert function["LoggingConfig"] == {
        "LogGroup": {"Ref": "MetricsLogGroup"},
        "LogFormat": "JSON",
        "ApplicationLogLevel": {"Fn::FindInMap": ["LambdaLogLevel", {"Ref": "LogLevel"}, "Level"]},
    }
    levels = template["Mappings"]["LambdaLogLevel"]
    assert set(levels) == set(template["Parameters"]["LogLevel"]["AllowedValues"])
    assert {name: level["Level"] for name, level in levels.items()} == {
        "DEBUG": "DEBUG", "INFO": "INFO", "WARNING": "WARN", "ERROR": "ERROR"}
    # The results are written with the export's encryption settings; no credentials.
    assert function["Environment"]["Variables"] == {
        "S3_BUCKET_NAME": {"Ref": "DataBucketName"},
        "S3_PREFIX": {"Ref": "ExportPrefix"},
        "RESULTS_PREFIX": {"Ref": "ResultsPrefix"},
        "S3_SSE": {"Ref": "S3Sse"},
        "S3_KMS_KEY_ID": {"Ref": "KmsKeyArn"},
        "LOG_LEVEL": {"Ref": "LogLevel"},
    }
    parameters = template["Parameters"]
    assert parameters["S3Sse"]["AllowedValues"] == ["AES256", "aws:kms"]
    assert parameters["S3Sse"]["Default"] == "AES256"
    assert parameters["KmsKeyArn"]["Default"] == ""
    rule = template["Rules"]["KmsKeyOnlyWithKms"]
    assert rule["RuleCondition"] == {"Fn::Equals": [{"Ref": "S3Sse"}, "AES256"]}
    assert rule["Assertions"][0]["Assert"] == {"Fn::Equals": [{"Ref": "KmsKeyArn"}, ""]}


@pytest.mark.parametrize(
    "key_arn, ok",
    [
        ("", True),
        ("arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab", True),
        ("arn:aws-us-gov:kms:us-gov-west-1:123456789012:key/mrk-1234abcd12ab34cd56ef1234567890ab", True),
        ("alias/data-waddle", False),  # an alias cannot name the key in an IAM policy
        ("arn:aws:kms:eu-west-1:123456789012:alias/data-waddle", False),
        ("1234abcd-12ab-34cd-56ef-1234567890ab", False),
        ("*", False),
    ],
)
def test_lambda_template_kms_key_parameter_takes_only_a_key_arn(key_arn, ok):
    pattern = load_template()["Parameters"]["KmsKeyArn"]["AllowedPattern"]
    assert bool(re.fullmatch(pattern, key_arn)) is ok


# ---------------------------------------------------------------------------------------
# Least privilege: the Lambda's role


def test_lambda_template_role_statements_are_exactly_these():
    policy = role_statements()
    assert policy == {
        "ListTheExportPrefix": {
            "Sid": "ListTheExportPrefix", "Effect": "Allow", "Action": "s3:ListBucket",
            "Resource": s3_arn(""),
            "Condition": {"StringLike": {"s3:prefix": [sub("${ExportPrefix}*")]}},
        },
        "ReadManifestsDestinationsAndBookings": {
            "Sid": "ReadManifestsDestinationsAndBookings", "Effect": "Allow", "Action": "s3:GetObject",
            "Resource": [
                s3_arn("/${ExportPrefix}*/_manifest.json"),
                s3_arn("/${ExportPrefix}*/destination/destination_*"),
                s3_arn("/${ExportPrefix}*/booking/booking_*"),
            ],
        },
        "WriteTheResults": {
            "Sid": "WriteTheResults", "Effect": "Allow", "Action": "s3:PutObject",
            "Resource": s3_arn("/${ResultsPrefix}*"),
            "Condition": {"StringEquals": {
                "s3:x-amz-server-side-encryption": {"Ref": "S3Sse"},
                "s3:x-amz-server-side-encryption-aws-kms-key-id":
                    {"Fn::If": ["HasKmsKey", {"Ref": "KmsKeyArn"}, {"Ref": "AWS::NoValue"}]},
            }},
        },
        "UseTheKmsKeyThroughS3": {
            "Sid": "UseTheKmsKeyThroughS3", "Effect": "Allow", "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Resource": {"Ref": "KmsKeyArn"},
            "Condition": {"StringEquals": {"kms:ViaService": sub("s3.${AWS::Region}.amazonaws.com")}},
        },
        "SendFailedRunsToTheQueue": {
            "Sid": "SendFailedRunsToTheQueue", "Effect": "Allow", "Action": "sqs:SendMessage",
            "Resource": {"Fn::GetAtt": ["FailureQueue", "Arn"]},
        },
        "WriteItsOwnLogs": {
            "Sid": "WriteItsOwnLogs", "Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents"],
            "Resource": {"Fn::GetAtt": ["MetricsLogGroup", "Arn"]},
        },
    }
    # Which statements are conditional, and on what.
    document = load_template()["Resources"]["MetricsRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    conditional = {s["Fn::If"][1]["Sid"]: (s["Fn::If"][0], s["Fn::If"][2]) for s in document["Statement"]
                   if "Fn::If" in s}
    assert conditional == {"WriteTheResults": ("WritesResults", {"Ref": "AWS::NoValue"}),
                           "UseTheKmsKeyThroughS3": ("HasKmsKey", {"Ref": "AWS::NoValue"})}


def test_lambda_template_no_policy_uses_ifexists_or_wildcard_actions():
    resources = load_template()["Resources"]
    documents = [resources["MetricsRole"]["Properties"]["Policies"][0]["PolicyDocument"],
                 resources["ExportPolicy"]["Properties"]["PolicyDocument"]]
    text = json.dumps(documents)
    assert "IfExists" not in text
    assert '"*"' not in text and "s3:*" not in text and "logs:*" not in text and "kms:*" not in text


# Resolving the template's ARNs as IAM sees them, to try real keys against them.

def resolve(node, values: dict[str, str], conditions: dict[str, bool]):
    """The JSON IAM would get: Fn::If by `conditions`, Ref / GetAtt / Fn::Sub from `values`,
    NoValue dropped, numbers as text (IAM compares them as strings)."""
    if isinstance(node, dict):
        if set(node) == {"Fn::If"}:
            name, yes, no = node["Fn::If"]
            return resolve(yes if conditions[name] else no, values, conditions)
        if set(node) == {"Ref"}:
            return NO_VALUE if node["Ref"] == "AWS::NoValue" else values[node["Ref"]]
        if set(node) == {"Fn::GetAtt"}:
            return values[".".join(node["Fn::GetAtt"])]
        if set(node) == {"Fn::Sub"}:
            text, local = node["Fn::Sub"], {}
            if isinstance(text, list):  # [text, {name: value}]
                text, local = text[0], {k: resolve(v, values, conditions) for k, v in text[1].items()}
            # ${!name} is the literal ${name}.
            return re.sub(r"\$\{(!?)([^}]+)\}",
                          lambda m: "${" + m.group(2) + "}" if m.group(1) else {**values, **local}[m.group(2)], text)
        out = {k: resolve(v, values, conditions) for k, v in node.items()}
        return {k: v for k, v in out.items() if v is not NO_VALUE}
    if isinstance(node, list):
        return [v for v in (resolve(item, values, conditions) for item in node) if v is not NO_VALUE]
    if isinstance(node, (int, float)) and not isinstance(node, bool):
        return str(node)
    return node


NO_VALUE = object()


def iam_matches(pattern: str, value: str) -> bool:
    """IAM's ARN wildcards: `*` any run of characters (slashes included), `?` one character."""
    regex = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    return re.fullmatch(regex, value, re.DOTALL) is not None


def template_values(prefix: str, results: str = "metrics/") -> dict[str, str]:
    return {
        "AWS::Partition": "aws", "AWS::Region": "REGION", "AWS::AccountId": "ACCOUNT_ID",
        "DataBucketName": "my-data-waddle-bucket", "ExportPrefix": prefix, "ResultsPrefix": results,
        "S3Sse": "AES256", "KmsKeyArn": "arn:aws:kms:REGION:ACCOUNT_ID:key/KEY_ID",
        "DataBucket.Arn": "arn:aws:s3:::my-data-waddle-bucket",
        "MetricsLogGroup.Arn": "arn:aws:logs:REGION:ACCOUNT_ID:log-group:/aws/lambda/data-waddle-destination-metrics:*",
        "FailureQueue.Arn": "arn:aws:sqs:REGION:ACCOUNT_ID:data-waddle-destination-metrics-failures",
        "DailySchedule.Arn": "arn:aws:events:REGION:ACCOUNT_ID:rule/data-waddle-DailySchedule",
    }


def readable_keys(prefix: str, keys: list[str]) -> set[str]:
    """The keys the role may GetObject, with ExportPrefix = `prefix`."""
    statement = role_statements()["ReadManifestsDestinationsAndBookings"]
    arns = resolve(statement["Resource"], template_values(prefix), {})
    return {key for key in keys if any(iam_matches(arn, f"arn:aws:s3:::my-data-waddle-bucket/{key}") for arn in arns)}


# Prefixes that try to trick the patterns: folders named like the tables.
PREFIXES = ["", "exports/", "booking/", "destination/", "customer/", "a/booking/", "x/destination/y/",
            "exports/booking/booking_/"]


def export_keys(prefix: str) -> dict[str, list[str]]:
    """Every kind of key stage 4 writes under `prefix`, by what it holds."""
    runs = [stage.new_run_id(datetime(2026, 11, 26, 6, 0, tzinfo=UTC)),
            stage.new_run_id(datetime(2026, 11, 26, 23, 59, 59, 999000, tzinfo=UTC))]
    keys: dict[str, list[str]] = {"manifest": [f"{prefix}{DAY}/{stage.MANIFEST_NAME}"]}
    for table in ("customer", "destination", "booking"):
        keys[table] = [stage.batch_key(prefix, DAY, run, table, number, compression)
                       for run in runs for number in (1, 12, 9999) for compression in ("zip", "gzip")]
        # The layout before runs, which a day may still hold.
        keys[table].append(f"{prefix}{DAY}/{table}/{table}_{DAY}_batch_0001.csv.zip")
    return keys


@pytest.mark.parametrize("prefix", PREFIXES)
def test_lambda_template_role_reads_manifests_destinations_bookings_never_customers(prefix):
    keys = export_keys(prefix)
    everything = [key for group in keys.values() for key in group]
    assert readable_keys(prefix, everything) == set(keys["manifest"] + keys["destination"] + keys["booking"])


@pytest.mark.parametrize("prefix", [p for p in PREFIXES if p and "booking/booking_" not in p])
def test_lambda_template_role_never_reads_customers_even_with_a_wider_export_prefix(prefix):
    # ExportPrefix left empty while stage 4 writes under `prefix` (say a/booking/): the file
    # names still keep the customer objects out. (Not a prefix that itself holds
    # ".../booking/booking_": with ExportPrefix set right, as above, even that one is safe.)
    keys = export_keys(prefix)
    everything = [key for group in keys.values() for key in group]
    assert readable_keys("", everything) == set(keys["manifest"] + keys["destination"] + keys["booking"])


@pytest.mark.parametrize("prefix", [p for p in PREFIXES if p])
def test_lambda_template_role_reads_nothing_outside_the_export_prefix(prefix):
    elsewhere = [key.replace(prefix, "other/", 1) for group in export_keys(prefix).values() for key in group]
    elsewhere += [f"metrics/{DAY}/destination_metrics.json", f"{DAY}/_manifest.json",
                  f"{DAY}/x/booking/booking_{DAY}_batch_0001.csv.zip"]
    assert readable_keys(prefix, elsewhere) == set()


def test_lambda_template_role_writes_only_results_with_the_encryption_header():
    results = role_statements()["WriteTheResults"]
    for kms_key, expected in [
        (False, {"s3:x-amz-server-side-encryption": "AES256"}),
        (True, {"s3:x-amz-server-side-encryption": "AES256",
                "s3:x-amz-server-side-encryption-aws-kms-key-id": "arn:aws:kms:REGION:ACCOUNT_ID:key/KEY_ID"}),
    ]:
        resolved = resolve(results, template_values("exports/"), {"HasKmsKey": kms_key})
        assert resolved["Resource"] == "arn:aws:s3:::my-data-waddle-bucket/metrics/*"
        assert resolved["Condition"] == {"StringEquals": expected}


# ---------------------------------------------------------------------------------------
# Least privilege: the export user's policy


def test_lambda_template_export_policy_statements_are_exactly_these():
    assert export_statements() == {
        # Strict: a listing without a prefix (all the bucket's keys) is refused. Stage 4's
        # bucket check is a one-key listing of the day for this reason.
        "ListTheExportPrefix": {
            "Sid": "ListTheExportPrefix", "Effect": "Allow", "Action": "s3:ListBucket",
            "Resource": s3_arn(""),
            "Condition": {"StringLike": {"s3:prefix": [sub("${ExportPrefix}*")]}},
        },
        "WriteAndReplaceTheExports": {
            "Sid": "WriteAndReplaceTheExports", "Effect": "Allow", "Action": ["s3:PutObject", "s3:DeleteObject"],
            "Resource": s3_arn("/${ExportPrefix}*"),
        },
        # Only the day's manifest, which a run reads back to keep the run it replaces.
        "ReadTheManifests": {
            "Sid": "ReadTheManifests", "Effect": "Allow", "Action": "s3:GetObject",
            "Resource": s3_arn("/${ExportPrefix}*/_manifest.json"),
        },
        "UseTheKmsKeyThroughS3": {
            "Sid": "UseTheKmsKeyThroughS3", "Effect": "Allow", "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Resource": {"Ref": "KmsKeyArn"},
            "Condition": {"StringEquals": {"kms:ViaService": sub("s3.${AWS::Region}.amazonaws.com")}},
        },
    }
    document = load_template()["Resources"]["ExportPolicy"]["Properties"]["PolicyDocument"]
    assert [s["Fn::If"][0] for s in document["Statement"] if "Fn::If" in s] == ["HasKmsKey"]


# ---------------------------------------------------------------------------------------
# The bucket (CreateDataBucket=true)


def test_lambda_template_bucket_policy_denies_plain_http_old_tls_and_unencrypted_uploads():
    template = load_template()
    policy = statements_by_sid(template["Resources"]["DataBucketPolicy"]["Properties"]["PolicyDocument"])
    assert set(policy) == {"DenyInsecureTransport", "DenyOutdatedTls", "DenyExportUploadsWithoutEncryptionHeader",
                           "DenyResultUploadsWithoutEncryptionHeader"}
    transport = policy["DenyInsecureTransport"]
    assert transport["Effect"] == "Deny" and transport["Action"] == "s3:*"
    assert transport["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert policy["DenyOutdatedTls"]["Condition"] == {"NumericLessThan": {"s3:TlsVersion": 1.2}}
    for sid, prefix in [("DenyExportUploadsWithoutEncryptionHeader", "ExportPrefix"),
                        ("DenyResultUploadsWithoutEncryptionHeader", "ResultsPrefix")]:
        unencrypted = policy[sid]
        assert unencrypted["Effect"] == "Deny" and unencrypted["Action"] == "s3:PutObject"
        assert unencrypted["Resource"] == sub(f"${{DataBucket.Arn}}/${{{prefix}}}*")
        assert unencrypted["Condition"] == {"Null": {"s3:x-amz-server-side-encryption": "true"}}
    encryption = template["Resources"]["DataBucket"]["Properties"]["BucketEncryption"]
    assert encryption["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"] == {
        "SSEAlgorithm": {"Ref": "S3Sse"},
        "KMSMasterKeyID": {"Fn::If": ["HasKmsKey", {"Ref": "KmsKeyArn"}, {"Ref": "AWS::NoValue"}]},
    }


# ---------------------------------------------------------------------------------------
# Failure is never silent


def test_lambda_template_failed_runs_go_to_an_encrypted_queue_after_retries():
    template = load_template()
    resources = template["Resources"]
    invoke = resources["MetricsInvokeConfig"]
    assert invoke["Type"] == "AWS::Lambda::EventInvokeConfig"
    assert invoke["Properties"] == {
        "FunctionName": {"Ref": "MetricsFunction"},
        "Qualifier": "$LATEST",
        "MaximumRetryAttempts": {"Ref": "MaximumRetryAttempts"},
        "MaximumEventAgeInSeconds": 3600,
        "DestinationConfig": {"OnFailure": {"Destination": {"Fn::GetAtt": ["FailureQueue", "Arn"]}}},
    }
    retries = template["Parameters"]["MaximumRetryAttempts"]
    assert (retries["Default"], retries["MinValue"], retries["MaxValue"]) == (2, 0, 2)

    queue = resources["FailureQueue"]
    assert queue["Type"] == "AWS::SQS::Queue"
    assert queue["Properties"]["SqsManagedSseEnabled"] is True
    assert queue["Properties"]["MessageRetentionPeriod"] == 1209600  # its own retention: 14 days
    # The destination is reached with the function's role.
    assert role_statements()["SendFailedRunsToTheQueue"]["Resource"] == {"Fn::GetAtt": ["FailureQueue", "Arn"]}

    # Undelivered schedule events go there too; only that rule may send, and only over TLS.
    target = resources["DailySchedule"]["Properties"]["Targets"][0]
    assert target["DeadLetterConfig"] == {"Arn": {"Fn::GetAtt": ["FailureQueue", "Arn"]}}
    queue_policy = resources["FailureQueuePolicy"]["Properties"]
    assert queue_policy["Queues"] == [{"Ref": "FailureQueue"}]
    statements = statements_by_sid(queue_policy["PolicyDocument"])
    assert statements["DenyInsecureTransport"]["Effect"] == "Deny"
    assert statements["DenyInsecureTransport"]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert statements["UndeliveredScheduleEvents"] == {
        "Sid": "UndeliveredScheduleEvents", "Effect": "Allow", "Principal": {"Service": "events.amazonaws.com"},
        "Action": "sqs:SendMessage", "Resource": {"Fn::GetAtt": ["FailureQueue", "Arn"]},
        "Condition": {"ArnEquals": {"aws:SourceArn": {"Fn::GetAtt": ["DailySchedule", "Arn"]}}},
    }

    # Someone hears of it: every failed attempt, and a run that failed for good.
    errors = resources["FailureAlarm"]["Properties"]
    assert (errors["Namespace"], errors["MetricName"]) == ("AWS/Lambda", "Errors")
    waiting = resources["FailureQueueAlarm"]["Properties"]
    assert (waiting["Namespace"], waiting["MetricName"]) == ("AWS/SQS", "ApproximateNumberOfMessagesVisible")
    assert waiting["Dimensions"] == [{"Name": "QueueName", "Value": {"Fn::GetAtt": ["FailureQueue", "QueueName"]}}]
    assert waiting["Threshold"] == 1 and waiting["ComparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert waiting["AlarmActions"] == errors["AlarmActions"]


# ---------------------------------------------------------------------------------------
# Any region: the layer from the aws-sdk-pandas public SSM parameter

# aws-sdk-pandas docs (install.rst): parameter_name="/aws/service/aws-sdk-pandas/3.4.0/py3.10/x86_64/layer-arn"
LAYER_PARAMETER = re.compile(r"/aws/service/aws-sdk-pandas/(\d+\.\d+\.\d+)/py(3\.\d+)/(x86_64|arm64)/layer-arn")


def test_lambda_template_layer_comes_from_the_public_ssm_parameter():
    template = load_template()
    parameter = template["Parameters"]["PandasLayerParameter"]
    assert parameter["Type"] == "AWS::SSM::Parameter::Value<String>"
    found = LAYER_PARAMETER.fullmatch(parameter["Default"])
    assert found, parameter["Default"]
    release, python, arch = found.groups()
    assert release == "3.16.1"  # the last good release before 3.17.0 (datetime64 segfault)
    function = template["Resources"]["MetricsFunction"]["Properties"]
    assert function["Layers"] == [{"Ref": "PandasLayerParameter"}]
    assert function["Runtime"] == f"python{python}" and function["Architectures"] == [arch]
    assert "arn:aws:lambda:" not in TEMPLATE.read_text(encoding="utf-8")  # no region's ARN baked in


def test_lambda_template_and_readme_give_the_documented_ssm_command():
    default = load_template()["Parameters"]["PandasLayerParameter"]["Default"]
    text = {"template": TEMPLATE.read_text(encoding="utf-8"), "README": README.read_text(encoding="utf-8")}
    for name, content in text.items():
        flat = " ".join(content.replace("\\\n", " ").split())
        assert f"aws ssm get-parameter --name {default}" in flat, name
        # Every path given (or its shape) is the documented one: no region segment.
        paths = re.findall(r"/aws/service/aws-sdk-pandas/\S*", content)
        assert paths, name
        for path in paths:
            assert re.match(r"/aws/service/aws-sdk-pandas/[^/\s]+/py[^/\s]+/[^/\s]+/layer-arn", path), (name, path)


# ---------------------------------------------------------------------------------------
# lambda/README.md gives the template's policies for the console, resolved


def readme_json_blocks(heading: str) -> list:
    section = README.read_text(encoding="utf-8").split(heading, 1)[1].split("\n### ", 1)[0]
    return [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, re.DOTALL)]


def test_lambda_readme_execution_role_policy_is_the_templates():
    values = template_values("exports/")
    role = load_template()["Resources"]["MetricsRole"]["Properties"]["Policies"][0]["PolicyDocument"]
    policy, kms_statement = readme_json_blocks("### IAM policy for the execution role")
    assert policy == resolve(role, values, {"WritesResults": True, "HasKmsKey": False})
    assert kms_statement == resolve(role_statements()["UseTheKmsKeyThroughS3"], values, {})
    assert kms_statement == resolve(export_statements()["UseTheKmsKeyThroughS3"], values, {})


def test_lambda_readme_export_user_policy_is_the_templates():
    document = load_template()["Resources"]["ExportPolicy"]["Properties"]["PolicyDocument"]
    (policy,) = readme_json_blocks("### IAM policy for the export user")
    assert policy == resolve(document, template_values("exports/"), {"HasKmsKey": False})


def test_lambda_readme_bucket_policy_is_the_templates():
    document = load_template()["Resources"]["DataBucketPolicy"]["Properties"]["PolicyDocument"]
    (policy,) = readme_json_blocks("### Bucket policy")
    assert policy == resolve(document, template_values("exports/"),
                             {"CreateBucketWithExportPrefix": True, "CreateBucketWritingResults": True})


# ---------------------------------------------------------------------------------------
# Stage 4 lists only inside its prefix (what ExportPolicy's strict condition needs)


class S3Calls:
    """Every S3 operation stage 4's client makes, with its parameters (botocore's events)."""

    def __init__(self, monkeypatch, deny_listing: bool = False):
        self.calls: list[tuple[str, dict]] = []
        self.deny_listing = deny_listing
        real_client = boto3.client

        def client(*args, **kwargs):
            made = real_client(*args, **kwargs)
            made.meta.events.register("before-parameter-build.s3", self.record)
            made.meta.events.register("before-call.s3", self.answer)
            return made

        monkeypatch.setattr(boto3, "client", client)

    def record(self, model, params, **_):
        self.calls.append((model.name, dict(params)))

    def answer(self, model, **_):
        if self.deny_listing and model.name == "ListObjectsV2":
            # What S3 answers when the policy refuses the listing.
            return (type("Reply", (), {"status_code": 403})(),
                    {"Error": {"Code": "AccessDenied", "Message": "Access Denied"},
                     "ResponseMetadata": {"HTTPStatusCode": 403}})
        return None


@pytest.fixture
def loaded_db(schema_db, sample_dir):
    assert transform_load_csv_data.main(["--data-dir", str(sample_dir)]) == 0
    return schema_db


def test_export_bucket_check_and_every_listing_stay_inside_the_prefix(loaded_db, s3_bucket, monkeypatch):
    monkeypatch.setenv("S3_PREFIX", "exports/")
    calls = S3Calls(monkeypatch)
    assert stage.main(["--date", DAY]) == 0
    assert stage.main(["--date", DAY]) == 0  # a re-run also lists the day to replace a run

    operations = [name for name, _ in calls.calls]
    assert "HeadBucket" not in operations and "ListObjects" not in operations
    # The bucket check: one key of the day, before anything else.
    first, params = calls.calls[0]
    assert first == "ListObjectsV2"
    assert {k: params[k] for k in ("Bucket", "Prefix", "MaxKeys")} == {
        "Bucket": s3_bucket, "Prefix": f"exports/{DAY}/", "MaxKeys": 1}
    listings = [params for name, params in calls.calls if name == "ListObjectsV2"]
    assert len(listings) >= 3
    assert all(params["Prefix"].startswith(f"exports/{DAY}/") for params in listings), listings
    # Reads: only manifests (ExportPolicy's ReadTheManifests); writes only under the prefix.
    for name, params in calls.calls:
        if name in ("GetObject", "HeadObject"):
            assert params["Key"] == f"exports/{DAY}/_manifest.json"
        if name in ("PutObject", "DeleteObject"):
            assert params["Key"].startswith("exports/")
        if name == "DeleteObjects":
            assert all(o["Key"].startswith("exports/") for o in params["Delete"]["Objects"])


def test_export_bucket_check_missing_bucket_is_the_same_one_line(schema_db, s3_bucket, monkeypatch, capsys):
    monkeypatch.setenv("S3_BUCKET_NAME", f"{s3_bucket}-missing")
    calls = S3Calls(monkeypatch)
    assert stage.main(["--date", DAY]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [(f"batch_transfer_data_to_cloud_storage: error: bucket {s3_bucket}-missing does not exist; "
                      "create it or correct S3_BUCKET_NAME")]
    assert [name for name, _ in calls.calls] == ["ListObjectsV2"]


def test_export_bucket_check_access_denied_is_one_line(schema_db, s3_bucket, monkeypatch, capsys):
    S3Calls(monkeypatch, deny_listing=True)
    assert stage.main(["--date", DAY]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [(f"batch_transfer_data_to_cloud_storage: error: access denied (AccessDenied) to bucket "
                      f"{s3_bucket} while checking the bucket; check the AWS credentials, the bucket policy and, "
                      "with aws:kms, the key policy")]


# ---------------------------------------------------------------------------------------
# lambda/athena.yaml: the catalogue, the workgroup, the analyst policy
ATHENA_DOC = REPO / "docs" / "athena.md"
# travel.sql's types as Glue (Hive) spells them for the Parquet SerDe.
HIVE_TYPES = {"BIGINT": "bigint", "INTEGER": "int", "DATE": "date", "TEXT": "string", "BOOLEAN": "boolean"}


def hive_type(sql_type: str) -> str:
    decimal = re.fullmatch(r"NUMERIC\((\d+), *(\d+)\)", sql_type)
    return f"decimal({decimal[1]},{decimal[2]})" if decimal else HIVE_TYPES[sql_type]


def athena_resources() -> dict:
    return load_template(ATHENA_TEMPLATE)["Resources"]


def analyst_statements() -> dict[str, dict]:
    return statements_by_sid(athena_resources()["AnalystPolicy"]["Properties"]["PolicyDocument"])


def athena_values(prefix: str = "exports/", results_bucket: str = "") -> dict[str, str]:
    return {**template_values(prefix), "DatabaseName": "data_waddle", "Database": "data_waddle",
            "QueryWorkGroup": "data-waddle-athena-analysts", "QueryResultsBucketName": results_bucket,
            "QueryResultsPrefix": "athena-results/", "FirstExportDay": "2026-11-01"}


@pytest.mark.parametrize("table", waddle_common.TABLES)
def test_athena_template_tables_have_the_exported_columns_typed_as_travel_sql(table):
    described = athena_resources()[f"{table.capitalize()}Table"]["Properties"]["TableInput"]
    declared = waddle_common.SCHEMA
    # Booking rows carry their destination's name and country (from the destination table).
    origin = {name: "destination" if table == "booking" and name in stage.BOOKING_FROM_DESTINATION else table
              for name in stage.EXPORT_COLUMNS[table]}
    expected = [{"Name": name, "Type": hive_type(declared[origin[name]].column(name).sql_type)}
                for name in stage.EXPORT_COLUMNS[table]]
    assert described["Name"] == table
    assert described["StorageDescriptor"]["Columns"] == expected
    assert [key["Name"] for key in described["PartitionKeys"]] == ["export_day"]
    assert described["PartitionKeys"][0]["Type"] == "string"


@pytest.mark.parametrize("table", waddle_common.TABLES)
@pytest.mark.parametrize("prefix", ["", "exports/", "a/b/"])
def test_athena_template_tables_read_the_days_symlink_folder_with_the_parquet_serde(table, prefix):
    described = athena_resources()[f"{table.capitalize()}Table"]["Properties"]["TableInput"]
    storage = described["StorageDescriptor"]
    assert storage["InputFormat"] == "org.apache.hadoop.hive.ql.io.SymlinkTextInputFormat"
    assert storage["OutputFormat"] == "org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat"
    assert storage["SerdeInfo"] == {"SerializationLibrary": "org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe"}
    parameters = resolve(described["Parameters"], athena_values(prefix), {})
    # Partition projection on the day, from FirstExportDay to today: no crawler, no MSCK REPAIR.
    assert {k: v for k, v in parameters.items() if k.startswith("projection.")} == {
        "projection.enabled": "true", "projection.export_day.type": "date",
        "projection.export_day.format": "yyyy-MM-dd", "projection.export_day.range": "2026-11-01,NOW",
        "projection.export_day.interval": "1", "projection.export_day.interval.unit": "DAYS"}
    # The template, with Athena's ${export_day} filled in, is the folder of the day's symlink file.
    location = parameters["storage.location.template"].replace("${export_day}", DAY)
    assert location + "symlink.txt" == f"s3://my-data-waddle-bucket/{stage.symlink_key(prefix, DAY, table)}"


def test_athena_template_workgroup_enforces_encrypted_results_and_a_scan_limit():
    template = load_template(ATHENA_TEMPLATE)
    group = template["Resources"]["QueryWorkGroup"]["Properties"]
    configuration = group["WorkGroupConfiguration"]
    assert configuration["EnforceWorkGroupConfiguration"] is True
    assert configuration["BytesScannedCutoffPerQuery"] == {"Ref": "BytesScannedCutoffPerQuery"}
    cutoff = template["Parameters"]["BytesScannedCutoffPerQuery"]
    assert cutoff["MinValue"] == 10_000_000 <= cutoff["Default"] <= 100 * 10**9  # Athena's minimum; a bound
    assert configuration["EngineVersion"] == {"SelectedEngineVersion": "Athena engine version 3"}
    results = configuration["ResultConfiguration"]
    for kms, expected in [(False, {"EncryptionOption": "SSE_S3"}),
                          (True, {"EncryptionOption": "SSE_KMS", "KmsKey": "arn:aws:kms:REGION:ACCOUNT_ID:key/KEY_ID"})]:
        assert resolve(results["EncryptionConfiguration"], athena_values(), {"HasKmsKey": kms}) == expected
    for bucket, in_data_bucket, location in [("", True, "s3://my-data-waddle-bucket/athena-results/"),
                                             ("results-bucket", False, "s3://results-bucket/athena-results/")]:
        values = athena_values(results_bucket=bucket)
        assert resolve(results["OutputLocation"], values, {"ResultsInTheDataBucket": in_data_bucket}) == location
    assert results["ExpectedBucketOwner"] == {"Ref": "AWS::AccountId"}


def test_athena_template_named_queries_belong_to_the_workgroup_and_database():
    resources = athena_resources()
    queries = {name: r["Properties"] for name, r in resources.items() if r["Type"] == "AWS::Athena::NamedQuery"}
    assert set(queries) == {"DayMetricsQuery", "RangeMetricsQuery"}
    for query in queries.values():
        assert query["Database"] == {"Ref": "Database"} and query["WorkGroup"] == {"Ref": "QueryWorkGroup"}
        assert ";" not in query["QueryString"]  # one statement, as Athena runs it
    # The day once per table; the range's first and last day once per table (Athena's
    # execution parameters are positional).
    assert queries["DayMetricsQuery"]["QueryString"].count("?") == 2
    assert queries["RangeMetricsQuery"]["QueryString"].count("?") == 4
    assert resources["DestinationTable"]["Properties"]["DatabaseName"] == {"Ref": "Database"}


def test_athena_template_grants_the_lambda_and_the_export_nothing():
    # The catalogue is a stack of its own: its only IAM resource is the analysts' policy,
    # attached to no one; template.yaml's role and export policy are pinned by the tests above.
    iam = {name: r for name, r in athena_resources().items() if r["Type"].startswith("AWS::IAM::")}
    assert list(iam) == ["AnalystPolicy"]
    assert set(iam["AnalystPolicy"]["Properties"]) == {"Description", "PolicyDocument"}  # no Roles, Users, Groups
    lambda_iam = {name for name, r in load_template()["Resources"].items() if r["Type"].startswith("AWS::IAM::")}
    assert lambda_iam == {"MetricsRole", "ExportPolicy"}


def test_athena_template_analyst_policy_statements_are_exactly_these():
    glue = "arn:${AWS::Partition}:glue:${AWS::Region}:${AWS::AccountId}"
    results_bucket = ["arn:${AWS::Partition}:s3:::${Bucket}",
                      {"Bucket": {"Fn::If": ["ResultsInTheDataBucket", {"Ref": "DataBucketName"},
                                             {"Ref": "QueryResultsBucketName"}]}}]
    assert analyst_statements() == {
        "RunQueriesInTheWorkgroup": {
            "Sid": "RunQueriesInTheWorkgroup", "Effect": "Allow",
            "Action": ["athena:StartQueryExecution", "athena:StopQueryExecution", "athena:GetQueryExecution",
                       "athena:GetQueryResults", "athena:GetQueryRuntimeStatistics", "athena:ListQueryExecutions",
                       "athena:BatchGetQueryExecution", "athena:GetWorkGroup", "athena:ListNamedQueries",
                       "athena:GetNamedQuery", "athena:BatchGetNamedQuery"],
            "Resource": sub("arn:${AWS::Partition}:athena:${AWS::Region}:${AWS::AccountId}:workgroup/${QueryWorkGroup}"),
        },
        "ReadTheDestinationAndBookingTables": {
            "Sid": "ReadTheDestinationAndBookingTables", "Effect": "Allow",
            "Action": ["glue:GetDatabase", "glue:GetTable", "glue:GetPartition", "glue:GetPartitions"],
            "Resource": [sub(f"{glue}:catalog"), sub(f"{glue}:database/default"), sub(f"{glue}:database/${{Database}}"),
                         sub(f"{glue}:table/${{Database}}/destination"), sub(f"{glue}:table/${{Database}}/booking")],
        },
        "LocateTheDataBucket": {
            "Sid": "LocateTheDataBucket", "Effect": "Allow", "Action": "s3:GetBucketLocation", "Resource": s3_arn(""),
        },
        "ListTheDestinationAndBookingFolders": {
            "Sid": "ListTheDestinationAndBookingFolders", "Effect": "Allow", "Action": "s3:ListBucket",
            "Resource": s3_arn(""),
            "Condition": {"StringLike": {"s3:prefix": [sub("${ExportPrefix}*/destination/*"),
                                                       sub("${ExportPrefix}*/booking/*")]}},
        },
        "ReadDestinationsAndBookings": {
            "Sid": "ReadDestinationsAndBookings", "Effect": "Allow", "Action": "s3:GetObject",
            "Resource": [s3_arn("/${ExportPrefix}*/_symlink/destination/symlink.txt"),
                         s3_arn("/${ExportPrefix}*/_symlink/booking/symlink.txt"),
                         s3_arn("/${ExportPrefix}*/destination/destination_*"),
                         s3_arn("/${ExportPrefix}*/booking/booking_*")],
        },
        "ListTheQueryResults": {
            "Sid": "ListTheQueryResults", "Effect": "Allow",
            "Action": ["s3:GetBucketLocation", "s3:ListBucket", "s3:ListBucketMultipartUploads"],
            "Resource": {"Fn::Sub": results_bucket},
            "Condition": {"StringLike": {"s3:prefix": [sub("${QueryResultsPrefix}*")]}},
        },
        "WriteAndReadTheQueryResults": {
            "Sid": "WriteAndReadTheQueryResults", "Effect": "Allow",
            "Action": ["s3:PutObject", "s3:GetObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"],
            "Resource": {"Fn::Sub": ["arn:${AWS::Partition}:s3:::${Bucket}/${QueryResultsPrefix}*",
                                     results_bucket[1]]},
        },
        "UseTheKmsKeyThroughS3": {
            "Sid": "UseTheKmsKeyThroughS3", "Effect": "Allow", "Action": ["kms:Decrypt", "kms:GenerateDataKey"],
            "Resource": {"Ref": "KmsKeyArn"},
            "Condition": {"StringEquals": {"kms:ViaService": sub("s3.${AWS::Region}.amazonaws.com")}},
        },
    }
    document = athena_resources()["AnalystPolicy"]["Properties"]["PolicyDocument"]
    assert [s["Fn::If"][0] for s in document["Statement"] if "Fn::If" in s] == ["HasKmsKey"]
    text = json.dumps(document)
    assert "IfExists" not in text and '"*"' not in text and ":*\"" not in text


def analyst_export_keys(prefix: str) -> dict[str, list[str]]:
    """export_keys() with the Parquet objects and the symlink files of the day."""
    keys = export_keys(prefix)
    runs = {part for key in keys["booking"] for part in key.split("/") if stage.RUN_ID_PATTERN.fullmatch(part)}
    assert len(runs) == 2
    for table in waddle_common.TABLES:
        keys[table] += [stage.batch_key(prefix, DAY, run, table, n, "parquet") for run in sorted(runs) for n in (1, 12)]
        keys[f"{table} symlink"] = [stage.symlink_key(prefix, DAY, table)]
    return keys


def analyst_readable(prefix: str, keys: list[str]) -> set[str]:
    arns = resolve(analyst_statements()["ReadDestinationsAndBookings"]["Resource"], athena_values(prefix), {})
    return {key for key in keys if any(iam_matches(arn, f"arn:aws:s3:::my-data-waddle-bucket/{key}") for arn in arns)}


@pytest.mark.parametrize("prefix", PREFIXES)
def test_athena_template_analysts_read_destinations_bookings_and_their_symlinks_never_customers(prefix):
    keys = analyst_export_keys(prefix)
    everything = [key for group in keys.values() for key in group]
    assert analyst_readable(prefix, everything) == set(
        keys["destination"] + keys["booking"] + keys["destination symlink"] + keys["booking symlink"])


@pytest.mark.parametrize("prefix", [p for p in PREFIXES if p])
def test_athena_template_analysts_read_nothing_outside_the_export_prefix(prefix):
    elsewhere = [key.replace(prefix, "other/", 1) for group in analyst_export_keys(prefix).values() for key in group]
    elsewhere += [f"athena-results/{DAY}/x.csv", f"{DAY}/_symlink/booking/symlink.txt"]
    assert analyst_readable(prefix, elsewhere) == set()


@pytest.mark.parametrize("prefix", PREFIXES)
def test_athena_template_analysts_list_only_destination_and_booking_folders(prefix):
    listing = resolve(analyst_statements()["ListTheDestinationAndBookingFolders"], athena_values(prefix), {})
    patterns = listing["Condition"]["StringLike"]["s3:prefix"]

    def may_list(folder: str) -> bool:
        return any(iam_matches(pattern, folder) for pattern in patterns)

    run = "20261126T060000.000Z-1a2b3c4d"
    for table in ("destination", "booking"):
        assert may_list(stage.symlink_key(prefix, DAY, table).rsplit("/", 1)[0] + "/")  # the partition
        assert may_list(stage.batch_key(prefix, DAY, run, table, 1, "parquet").rsplit("/", 1)[0] + "/")
    # Not customer's folders, not the day, not a run: listing a day's prefix is not a way in.
    for folder in (f"{prefix}{DAY}/_symlink/customer/", f"{prefix}{DAY}/{run}/customer/", f"{prefix}{DAY}/",
                   f"{prefix}{DAY}/{run}/", f"{prefix}{DAY}/_symlink/", prefix):
        assert not may_list(folder), folder


def test_athena_template_analysts_reach_only_the_destination_and_booking_tables():
    arns = resolve(analyst_statements()["ReadTheDestinationAndBookingTables"]["Resource"], athena_values(), {})
    glue = "arn:aws:glue:REGION:ACCOUNT_ID"
    allowed = {name for name in ("destination", "booking", "customer")
               if any(iam_matches(arn, f"{glue}:table/data_waddle/{name}") for arn in arns)}
    assert allowed == {"destination", "booking"}


def test_athena_doc_analyst_policy_is_the_templates():
    document = athena_resources()["AnalystPolicy"]["Properties"]["PolicyDocument"]
    section = ATHENA_DOC.read_text(encoding="utf-8").split("## The analyst policy", 1)[1].split("\n## ", 1)[0]
    (policy,) = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", section, re.DOTALL)]
    assert policy == resolve(document, athena_values(), {"HasKmsKey": False, "ResultsInTheDataBucket": True})
