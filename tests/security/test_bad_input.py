"""Hostile and broken submissions against the gateway (real Redis + SeaweedFS behind it):
each gets its documented status and a message naming what to change, and leaves nothing
queued or stored.

Already covered in tests/service/test_gateway.py and not repeated here: empty file, truncated
WAV, random bytes named .wav, MP3 sent as audio/wav, zero-length and over-long audio,
384 kHz, 8 channels, float WAV with NaN and with inf samples, silence, empty / 10 kB /
control-character / unknown instructions, top_k/top_p/temperature/cfg_coef/seed basics,
output_format, unknown fields, missing parts, four malformed bodies, a declared and a
streamed 1 GB body (cut off at the cap), a `../../etc/passwd` file name, loopback / private /
metadata / ftp webhook URLs, a malformed Idempotency-Key.
"""

from __future__ import annotations

import select
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from local_stack import rss_bytes, stack_values
from musicedit.queue import queue_depth

ALICE = {"Authorization": "Bearer alice-secret-key"}
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> bytes:
    import numpy as np
    import soundfile as sf

    path = tmp_path_factory.mktemp("clip") / "clip.wav"
    rng = np.random.default_rng(0)
    sf.write(str(path), (rng.standard_normal((16000, 1)) * 0.1).astype("float32"), 16000)
    return path.read_bytes()


def submit(gw, clip: bytes, instruction: str = "Add drums", filename: str = "clip.wav",
           headers=ALICE, **fields):
    data = {"instruction": instruction, **{k: str(v) for k, v in fields.items()}}
    return httpx.post(f"{gw.url}/v1/edits", headers=headers, data=data,
                      files={"file": (filename, clip, "audio/wav")}, timeout=30)


def assert_problem(response, status: int, *fragments: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    for fragment in fragments:
        assert fragment in body["detail"], body["detail"]
    return body


def assert_nothing_queued_or_stored(gw) -> None:
    ctx = gw.context
    assert ctx.store.count_queued() == 0
    assert ctx.store.list_jobs("alice", 10, None) == []
    assert queue_depth(ctx.celery) == 0
    assert ctx.storage.list_keys() == []
    assert list((ctx.settings.data_dir / "tmp").glob("*")) == []


OUT_OF_RANGE = {
    "negative seed": ({"seed": -1}, "seed"),
    "seed over 2**63-1": ({"seed": 2**63}, "seed"),
    "fractional top_k": ({"top_k": 1.5}, "top_k"),
    "negative top_k": ({"top_k": -1}, "top_k"),
    "negative top_p": ({"top_p": -0.1}, "top_p"),
    "NaN top_p": ({"top_p": "nan"}, "top_p"),
    "temperature over 10": ({"temperature": 10.5}, "temperature"),
    "negative temperature": ({"temperature": -1}, "temperature"),
    "infinite temperature": ({"temperature": "inf"}, "temperature"),
    "NaN temperature": ({"temperature": "nan"}, "temperature"),
    "cfg_coef over 20": ({"cfg_coef": 21}, "cfg_coef"),
    "infinite cfg_coef": ({"cfg_coef": "1e309"}, "cfg_coef"),
    "NaN cfg_coef": ({"cfg_coef": "NaN"}, "cfg_coef"),
    "text top_p": ({"top_p": "high"}, "top_p"),
}


@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_out_of_range_sampling_parameters_are_422(gw, clip, case):
    fields, name = OUT_OF_RANGE[case]
    assert_problem(submit(gw, clip, **fields), 422, name, "Allowed: seed >= 0")
    assert_nothing_queued_or_stored(gw)


WEBHOOKS = {
    "localhost": "http://localhost:9000/hook",
    "IPv6 loopback": "http://[::1]:9000/hook",
    "IPv4-mapped IPv6 loopback": "http://[::ffff:127.0.0.1]/hook",
    "short loopback form": "http://127.1/hook",
    "decimal loopback": "http://2130706433/hook",
    "unspecified address": "http://0.0.0.0/hook",
    "192.168/16": "https://192.168.1.10/hook",
    "172.16/12": "http://172.16.0.1/hook",
    "carrier-grade NAT": "http://100.64.0.1/hook",
    "IPv6 unique local": "http://[fd00::1]/hook",
    "IPv6 link-local": "http://[fe80::1]/hook",
}


@pytest.mark.parametrize("case", list(WEBHOOKS))
def test_webhooks_to_loopback_or_private_addresses_are_refused(gw, clip, case):
    assert_problem(submit(gw, clip, webhook_url=WEBHOOKS[case]), 422, "non-public",
                   "MUSICEDIT_WEBHOOK_ALLOW_PRIVATE")
    assert_nothing_queued_or_stored(gw)


@pytest.mark.parametrize("url", ["http://[::1/hook", "http://example.com:99999/hook",
                                 "http://user:pass@example.com/hook", "javascript:alert(1)",
                                 "//example.com/hook", "http:///hook"])
def test_malformed_webhook_urls_are_422_not_500(gw, clip, url):
    # "http://[::1/hook" used to raise ValueError inside urlsplit: a 500
    assert_problem(submit(gw, clip, webhook_url=url), 422, "webhook_url")
    assert_nothing_queued_or_stored(gw)


def test_private_webhooks_are_accepted_when_the_setting_allows_them(
        make_settings, run_gateway, redis_url, s3_server, s3_bucket, clip):
    gw = run_gateway(make_settings(redis_url=redis_url, s3=(s3_server, s3_bucket),
                                   webhook_allow_private=True))
    for url in ("http://127.0.0.1:9000/hook", "http://10.0.0.5/hook", "http://[::1]:8080/h"):
        response = submit(gw, clip, webhook_url=url)
        assert response.status_code == 202, response.text
        assert response.json()["webhook_url"] == url
    assert_problem(submit(gw, clip, webhook_url="ftp://10.0.0.5/x"), 422, "http")


def test_repeated_fields_are_422(gw, clip):
    body = (b"--XYZ\r\nContent-Disposition: form-data; name=\"instruction\"\r\n\r\nAdd drums\r\n"
            b"--XYZ\r\nContent-Disposition: form-data; name=\"instruction\"\r\n\r\nNo bass\r\n"
            b"--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n"
            + clip + b"\r\n--XYZ--\r\n")
    two_instructions = httpx.post(f"{gw.url}/v1/edits", content=body, headers={
        **ALICE, "Content-Type": "multipart/form-data; boundary=XYZ"})
    assert_problem(two_instructions, 422, "'instruction' was sent twice")
    two_files = httpx.post(f"{gw.url}/v1/edits", headers=ALICE, data={"instruction": "Add drums"},
                           files=[("file", ("a.wav", clip)), ("file", ("b.wav", clip))])
    assert_problem(two_files, 422, "'file' was sent twice")
    assert_nothing_queued_or_stored(gw)


MALFORMED = {
    "part without Content-Disposition":
        b"--XYZ\r\nContent-Type: text/plain\r\n\r\nAdd drums\r\n--XYZ--\r\n",
    "Content-Disposition without a name":
        b"--XYZ\r\nContent-Disposition: form-data\r\n\r\nAdd drums\r\n--XYZ--\r\n",
    "attachment instead of form-data":
        b"--XYZ\r\nContent-Disposition: attachment; name=\"instruction\"\r\n\r\nx\r\n--XYZ--\r\n",
    "file part cut off before the closing boundary":
        b"--XYZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\r\n"
        b"RIFF\x00\x00\x00\x00WAVEfmt ",
    "header line without a colon":
        b"--XYZ\r\nthis is not a header\r\n\r\nx\r\n--XYZ--\r\n",
    "wrong boundary":
        b"--ABC\r\nContent-Disposition: form-data; name=\"instruction\"\r\n\r\nx\r\n--ABC--\r\n",
    "empty body": b"",
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_multipart_is_400(gw, case):
    response = httpx.post(f"{gw.url}/v1/edits", content=MALFORMED[case], headers={
        **ALICE, "Content-Type": "multipart/form-data; boundary=XYZ"})
    assert_problem(response, 400, "multipart")
    assert_nothing_queued_or_stored(gw)


TRAVERSAL = ["../../../../tmp/evil.wav", "..\\..\\windows\\evil.wav", "/etc/passwd",
             "%2e%2e%2f%2e%2e%2fevil.wav", "inputs/other-job", "a\r\nX-Injected: 1.wav",
             "\u202eevil\u202d.wav", "x" * 1000 + ".wav"]


def test_path_traversal_in_file_names_never_reaches_storage_or_logs(gw, clip, caplog):
    import json
    import logging

    caplog.set_level(logging.INFO, logger="musicedit.service")
    ids = []
    for name in TRAVERSAL:
        response = submit(gw, clip, filename=name)
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    assert sorted(gw.context.storage.list_keys()) == sorted(f"inputs/{i}" for i in ids)
    assert not list(Path("/tmp").glob("evil.wav"))
    # a part header past the parser's size limit is a malformed body, not a crash
    assert_problem(submit(gw, clip, filename="x" * 10_000 + ".wav"), 400, "header size")
    logged = [json.loads(r.getMessage())["file_name"] for r in caplog.records
              if r.getMessage().startswith('{"event": "job_submitted"')
              or '"event": "job_submitted"' in r.getMessage()]
    assert len(logged) == len(TRAVERSAL)
    for name in logged:
        assert name is None or ("/" not in name and "\\" not in name and "\r" not in name
                                and "\n" not in name and "\u202e" not in name
                                and len(name) <= 100 and not name.startswith("."))


def stream_upload(url: str, size: int) -> tuple[int, bytes]:
    """POST a multipart upload whose file part is `size` zero bytes, chunked, over a raw socket
    (httpx would not read the reply before it has sent the whole body). Stops sending as soon
    as the server answers or closes; returns (file bytes sent, everything the server sent)."""
    host, port = url.removeprefix("http://").split(":")
    head = (b"--XYZ\r\nContent-Disposition: form-data; name=\"instruction\"\r\n\r\nAdd drums"
            b"\r\n--XYZ\r\nContent-Disposition: form-data; name=\"file\"; "
            b"filename=\"big.wav\"\r\n\r\n")
    chunk = b"\0" * (256 * 1024)
    sent = 0
    reply = b""
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /v1/edits HTTP/1.1\r\nHost: x\r\nAuthorization: "
                     + ALICE["Authorization"].encode()
                     + b"\r\nContent-Type: multipart/form-data; boundary=XYZ\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n%s\r\n" % (len(head), head))
        try:
            while sent < size and not select.select([sock], [], [], 0)[0]:
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while a chunk was on its way
        try:
            while data := sock.recv(65536):
                reply += data
        except ConnectionResetError:
            pass  # closed with our unread chunks in its buffer: the reply came before the reset
    return sent, reply


@pytest.mark.slow
def test_1_gb_streamed_upload_is_refused_while_streaming_and_gateway_memory_stays_flat(
        redis_server, s3_server, start_gateway_process, tmp_path):
    """A 1 GiB chunked body, sent over a raw socket a chunk at a time (never held in memory on
    either side), against a gateway process whose cap is 64 MiB: the gateway answers 413 once
    the cap is passed while the client is still sending, and the rest is never sent; the
    gateway's resident memory grows by far less than what it read (it spools to disk)."""
    redis_client = redis_server.client()
    redis_client.select(9)
    redis_client.flushdb()
    bucket = s3_server.create_bucket()
    values = stack_values(tmp_path / "var",
                          redis_url=f"redis://127.0.0.1:{redis_server.port}/9",
                          s3=(s3_server, bucket), max_upload_bytes=str(64 * MiB))
    gateway = start_gateway_process(values)
    for _ in range(3):  # warm up: imports, first request paths
        httpx.get(f"{gateway.url}/v1/edits", headers=ALICE)
    before = gateway.rss()
    peak = [before]
    sampling = threading.Event()

    def sample() -> None:
        while not sampling.is_set():
            peak[0] = max(peak[0], rss_bytes(gateway.pid))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        sent, reply = stream_upload(gateway.url, 1024 * MiB)
    finally:
        sampling.set()
        sampler.join()
    after = gateway.rss()

    assert sent < 256 * MiB, f"the gateway read {sent / MiB:.0f} MiB of a 64 MiB cap"
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), reply[:300]
    assert b"content-type: application/problem+json" in head.lower(), head
    assert f"limit of {64 * MiB} bytes".encode() in body, body[:300]
    growth = peak[0] - before
    assert growth < 24 * MiB, f"gateway RSS grew by {growth / MiB:.1f} MiB while reading the body"
    print(f"\nsent {sent / MiB:.0f} MiB before the cut-off; gateway RSS "
          f"{before / MiB:.1f} -> peak {peak[0] / MiB:.1f} -> {after / MiB:.1f} MiB")
    # the gateway still serves, and nothing was stored, queued or left in its temp dir
    assert httpx.get(f"{gateway.url}/healthz").status_code == 200
    assert s3_server.client().list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
    assert httpx.get(f"{gateway.url}/v1/edits", headers=ALICE).json()["items"] == []
    assert list((tmp_path / "var" / "tmp").glob("*")) == []
