"""A small S3 client for publishing pages: HEAD, PUT object, create bucket.

Requests are signed with AWS Signature Version 4 (hashlib + hmac), sent with
the standard library, path-style (``ENDPOINT/BUCKET/KEY``), so it works with
AWS S3 and the S3-compatible servers (SeaweedFS, MinIO, Ceph, R2…) alike. A
publisher puts a few dozen small files: boto3's weight buys nothing here.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import urllib.error
import urllib.request
from dataclasses import dataclass
from email.message import Message
from urllib.parse import quote, urlsplit

from ..config import S3Settings

EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
TIMEOUT = 30.0  # seconds per request


class S3Error(RuntimeError):
    """The storage answered with an error, or could not be reached."""


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    etag: str  # without quotes; the MD5 of the content for a single PUT
    content_type: str
    cache_control: str


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.digest(key, msg.encode(), hashlib.sha256)


def sign(
    s: S3Settings,
    method: str,
    path: str,
    headers: dict[str, str],
    payload_sha256: str,
    now: datetime.datetime | None = None,
) -> dict[str, str]:
    """``headers`` plus the SigV4 ``Authorization`` (and ``x-amz-*``) for a request
    without a query string; ``path`` is already URI-encoded."""
    now = now or datetime.datetime.now(datetime.UTC)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = amz_date[:8]
    out = {
        **headers,
        "host": urlsplit(s.endpoint).netloc,
        "x-amz-date": amz_date,
        "x-amz-content-sha256": payload_sha256,
    }
    if s.session_token:
        out["x-amz-security-token"] = s.session_token
    signed = sorted(k.lower() for k in out)
    lower = {k.lower(): " ".join(v.strip().split()) for k, v in out.items()}
    canonical = "\n".join(
        [
            method,
            path,
            "",  # no query string
            "".join(f"{k}:{lower[k]}\n" for k in signed),
            ";".join(signed),
            payload_sha256,
        ]
    )
    scope = f"{day}/{s.region}/s3/aws4_request"
    to_sign = "\n".join(
        ["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    key = _hmac(("AWS4" + s.secret_key).encode(), day)
    for part in (s.region, "s3", "aws4_request"):
        key = _hmac(key, part)
    signature = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    out["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={s.access_key}/{scope}, "
        f"SignedHeaders={';'.join(signed)}, Signature={signature}"
    )
    del out["host"]  # urllib sets it from the URL
    return out


class S3:
    def __init__(self, settings: S3Settings) -> None:
        self.s = settings

    def _path(self, key: str = "") -> str:
        path = "/" + quote(self.s.bucket, safe="")
        return path + "/" + quote(key, safe="/~") if key else path

    def _send(
        self, method: str, key: str, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> tuple[int, Message[str, str], bytes]:
        path = self._path(key)
        signed = sign(self.s, method, path, headers or {}, hashlib.sha256(body).hexdigest())
        req = urllib.request.Request(
            self.s.endpoint + path, data=body if method == "PUT" else None, method=method
        )
        for k, v in signed.items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
                return r.status, r.headers, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers, e.read()
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise S3Error(f"{method} {self.s.endpoint}{path}: {reason}") from None

    def head(self, key: str) -> ObjectInfo | None:
        """What the bucket holds under ``key``, or None if nothing."""
        status, headers, _ = self._send("HEAD", key)
        if status == 404:
            return None
        if status == 403:
            raise S3Error(
                f"HEAD {self._path(key)}: access denied (HTTP 403): check the credentials "
                "(ANTEROOM_S3_ACCESS_KEY_ID or AWS_ACCESS_KEY_ID), ANTEROOM_S3_REGION and "
                "that they may read and write the bucket"
            )
        if status != 200:
            raise S3Error(f"HEAD {self._path(key)}: HTTP {status}")
        return ObjectInfo(
            etag=headers.get("ETag", "").strip('"'),
            content_type=headers.get("Content-Type", ""),
            cache_control=headers.get("Cache-Control", ""),
        )

    def put(self, key: str, body: bytes, content_type: str, cache_control: str) -> None:
        headers = {
            "Content-Type": content_type,
            "Cache-Control": cache_control,
            "Content-MD5": _md5_b64(body),  # the storage refuses a corrupted upload
        }
        status, _, text = self._send("PUT", key, body, headers)
        if status != 200:
            raise S3Error(f"PUT {self._path(key)}: HTTP {status}: {_error_code(text)}")

    def create_bucket(self) -> None:
        """Creates the bucket; one that already exists and is ours is fine."""
        body = b""
        if self.s.region != "us-east-1":
            body = (
                "<CreateBucketConfiguration><LocationConstraint>"
                f"{self.s.region}</LocationConstraint></CreateBucketConfiguration>"
            ).encode()
        status, _, text = self._send("PUT", "", body)
        if status == 200 or b"BucketAlreadyOwnedByYou" in text:
            return
        raise S3Error(f"create bucket {self.s.bucket}: HTTP {status}: {_error_code(text)}")


def _md5_b64(body: bytes) -> str:
    return base64.b64encode(hashlib.md5(body).digest()).decode()


def _error_code(body: bytes) -> str:
    """The <Code> of an S3 error document, else the start of the body."""
    text = body.decode(errors="replace")
    start, end = text.find("<Code>"), text.find("</Code>")
    if 0 <= start < end:
        return text[start + 6 : end]
    return text[:200].strip() or "(empty body)"
