"""Object storage against a real SeaweedFS S3 server (signatures and expiry checked) and disk."""

import base64
import hashlib
import io
import os
import re
import time

import httpx
import pytest

from musicedit.errors import ObjectNotFound, PayloadTooLarge, StorageUnavailable
from musicedit.storage import LocalStorage, S3Storage


@pytest.fixture
def s3(make_settings, s3_server, s3_bucket) -> S3Storage:
    settings = make_settings(s3=(s3_server, s3_bucket), s3_multipart_chunk_bytes=5 * 1024 * 1024)
    return S3Storage.from_settings(settings)


def test_put_get_delete_roundtrip(s3, tmp_path):
    size = s3.put_file("inputs/job1", io.BytesIO(b"hello audio"), metadata={"job-id": "job1"})
    assert size == 11 and s3.exists("inputs/job1")
    s3.get_to_file("inputs/job1", tmp_path / "out")
    assert (tmp_path / "out").read_bytes() == b"hello audio"
    s3.delete("inputs/job1")
    assert not s3.exists("inputs/job1")
    with pytest.raises(ObjectNotFound):
        s3.get_to_file("inputs/job1", tmp_path / "again")


def test_puts_send_no_expect_continue(s3):
    """Single and multipart PUTs go out without `Expect: 100-continue` (no extra round trip
    before the body), and the server still accepts them."""
    sent = []
    for client in (s3.client, s3._checksummed_put_client):
        client.meta.events.register("before-send.s3", lambda request, **_: sent.append(
            (request.method, dict(request.headers))))
    s3.put_file("inputs/small", io.BytesIO(b"x" * 1000), content_type="audio/flac")
    s3.put_file("inputs/large", io.BytesIO(os.urandom(6 * 1024 * 1024)))
    puts = [headers for method, headers in sent if method == "PUT"]
    assert len(puts) == 3  # one single PUT, two parts
    assert all("Expect" not in headers for headers in puts)
    head = s3.client.head_object(Bucket=s3.bucket, Key="inputs/small")
    assert head["ContentType"] == "audio/flac" and head["ContentLength"] == 1000


def _header(headers: dict, name: str):
    return next((v.decode() if isinstance(v, bytes) else v for k, v in headers.items()
                 if k.lower() == name), None)


def test_every_uploaded_byte_is_verified_by_s3(s3):
    """A single PUT carries the content's SHA-256 as `x-amz-checksum-sha256` (the caller's, or
    computed) instead of a SigV4 payload hash; multipart parts keep the signed payload hash.
    S3 refuses a body that does not match the checksum and stores nothing."""
    sent = []
    for client in (s3.client, s3._checksummed_put_client):
        client.meta.events.register("before-send.s3", lambda request, **_: sent.append(
            (request.method, request.url, dict(request.headers))))
    body = os.urandom(640_000)
    digest = hashlib.sha256(body)
    s3.put_file("inputs/given", io.BytesIO(body), sha256=digest.hexdigest())
    s3.put_file("inputs/computed", io.BytesIO(body))
    s3.put_file("inputs/parts", io.BytesIO(os.urandom(6 * 1024 * 1024)))
    single = [h for method, url, h in sent if method == "PUT" and "partNumber" not in url]
    parts = [h for method, url, h in sent if method == "PUT" and "partNumber" in url]
    expected = base64.b64encode(digest.digest()).decode()
    assert [_header(h, "x-amz-checksum-sha256") for h in single] == [expected, expected]
    assert {_header(h, "x-amz-content-sha256") for h in single} == {"UNSIGNED-PAYLOAD"}
    assert len(parts) == 2 and all(
        re.fullmatch("[0-9a-f]{64}", _header(h, "x-amz-content-sha256")) for h in parts)
    head = s3.client.head_object(Bucket=s3.bucket, Key="inputs/given", ChecksumMode="ENABLED")
    assert head["ChecksumSHA256"] == expected

    wrong = hashlib.sha256(b"something else").hexdigest()
    with pytest.raises(StorageUnavailable, match="BadDigest"):
        s3.put_file("inputs/corrupted", io.BytesIO(body), sha256=wrong)
    assert not s3.exists("inputs/corrupted")


def test_multipart_upload_streams_and_keeps_bytes(s3, tmp_path):
    payload = os.urandom(12 * 1024 * 1024 + 123)  # three parts of 5 MiB
    assert s3.put_file("results/big.wav", io.BytesIO(payload)) == len(payload)
    s3.get_to_file("results/big.wav", tmp_path / "big")
    assert (tmp_path / "big").read_bytes() == payload


@pytest.mark.parametrize("size", [1024 * 1024 + 1, 11 * 1024 * 1024])
def test_upload_cap_aborts_and_leaves_nothing(s3, size):
    with pytest.raises(PayloadTooLarge):
        s3.put_file("inputs/too-big", io.BytesIO(b"\0" * size), max_bytes=1024 * 1024)
    assert s3.list_keys() == []
    uploads = s3.client.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])
    assert uploads == []


def test_presigned_get_works_then_expires(s3):
    s3.put_file("results/r.flac", io.BytesIO(b"flac bytes"))
    url = s3.presigned_get_url("results/r.flac", expires_in=2)
    assert httpx.get(url).content == b"flac bytes"
    time.sleep(3.1)
    assert httpx.get(url).status_code == 403
    tampered = url.replace("r.flac", "x.flac")
    assert httpx.get(tampered).status_code in (403, 404)


def test_wrong_credentials_and_unreachable_endpoint_are_unavailable(make_settings, s3_server,
                                                                     s3_bucket):
    wrong = S3Storage.from_settings(
        make_settings(s3=(s3_server, s3_bucket), s3_secret_access_key="not-the-secret"))
    with pytest.raises(StorageUnavailable):
        wrong.check()
    down = S3Storage.from_settings(
        make_settings(s3=(s3_server, s3_bucket), s3_endpoint_url="http://127.0.0.1:9"))
    with pytest.raises(StorageUnavailable):
        down.put_file("inputs/x", io.BytesIO(b"x"))


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "inputs/../../x", "a//b", "", "a/.."])
def test_keys_cannot_escape(tmp_path, key):
    storage = LocalStorage(tmp_path / "objects")
    with pytest.raises(ValueError):
        storage.put_file(key, io.BytesIO(b"x"))


def test_local_storage_roundtrip_and_cap(tmp_path):
    storage = LocalStorage(tmp_path / "objects")
    storage.put_file("results/a.wav", io.BytesIO(b"abc"))
    assert storage.local_path("results/a.wav").read_bytes() == b"abc"
    assert storage.presigned_get_url("results/a.wav", 60) is None
    with pytest.raises(PayloadTooLarge):
        storage.put_file("inputs/b", io.BytesIO(b"x" * 100), max_bytes=10)
    assert storage.list_keys() == ["results/a.wav"]
    storage.delete("results/a.wav")
    storage.delete("results/a.wav")  # idempotent
    assert storage.list_keys() == []


def test_the_test_s3_has_room_for_every_tests_bucket(s3_server):
    """Every test takes a bucket, and SeaweedFS gives each bucket a volume of its own. Left to
    `weed mini`, the number of volumes is free disk / volume size (~20 on a CI runner), and the
    suite's later uploads failed with InternalError. The server must not depend on the disk."""
    status = httpx.get(f"http://127.0.0.1:{s3_server.ports[0]}/dir/status", timeout=5).json()
    assert status["Topology"]["Max"] >= 1000
