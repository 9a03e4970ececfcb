"""The SigV4 signer against AWS's published example, and settings validation."""

from __future__ import annotations

import datetime

import pytest

from sidecar.config import ConfigError, S3Settings
from sidecar.pages.s3 import EMPTY_SHA256, sign


def test_signature_matches_the_aws_documented_example() -> None:
    # "Example: GET Object" of the AWS Signature Version 4 docs for S3
    s = S3Settings(
        endpoint="https://examplebucket.s3.amazonaws.com",
        bucket="examplebucket",
        prefix="",
        region="us-east-1",
        access_key="AKIAIOSFODNN7EXAMPLE",
        secret_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    )
    when = datetime.datetime(2013, 5, 24, tzinfo=datetime.UTC)
    headers = sign(s, "GET", "/test.txt", {"Range": "bytes=0-9"}, EMPTY_SHA256, when)
    assert headers["Authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
    )
    assert headers["x-amz-date"] == "20130524T000000Z"


GOOD = {
    "ANTEROOM_S3_ENDPOINT": "http://127.0.0.1:8333",
    "ANTEROOM_S3_BUCKET": "pages",
    "AWS_ACCESS_KEY_ID": "id",
    "AWS_SECRET_ACCESS_KEY": "secret",
}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"ANTEROOM_S3_ENDPOINT": "s3.example.com"}, "ANTEROOM_S3_ENDPOINT"),
        ({"ANTEROOM_S3_ENDPOINT": "https://s3.example.com/bucket"}, "ANTEROOM_S3_ENDPOINT"),
        ({"ANTEROOM_S3_BUCKET": ""}, "ANTEROOM_S3_BUCKET"),
        ({"ANTEROOM_S3_BUCKET": "a/b"}, "ANTEROOM_S3_BUCKET"),
        ({"ANTEROOM_S3_PREFIX": "../x"}, "ANTEROOM_S3_PREFIX"),
        ({"AWS_SECRET_ACCESS_KEY": ""}, "ANTEROOM_S3_SECRET_ACCESS_KEY"),
    ],
)
def test_bad_settings_are_named(change: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        S3Settings.from_env({**GOOD, **change})


def test_anteroom_variables_win_over_aws_ones() -> None:
    s = S3Settings.from_env(
        {
            **GOOD,
            "ANTEROOM_S3_ACCESS_KEY_ID": "mine",
            "ANTEROOM_S3_SECRET_ACCESS_KEY": "mine-secret",
            "ANTEROOM_S3_PREFIX": "/site/",
        }
    )
    assert (s.access_key, s.secret_key, s.prefix, s.region) == (
        "mine",
        "mine-secret",
        "site/",
        "us-east-1",
    )
