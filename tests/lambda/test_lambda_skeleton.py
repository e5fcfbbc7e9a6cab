"""Smoke test of the Lambda tests' own conftest: moto over HTTP, no PostgreSQL."""


def test_lambda_conftest_serves_s3_over_http(s3, s3_bucket, aws):
    assert aws.startswith("http://127.0.0.1:")
    s3.put_object(Bucket=s3_bucket, Key="probe", Body=b"x")
    assert s3.get_object(Bucket=s3_bucket, Key="probe")["Body"].read() == b"x"
