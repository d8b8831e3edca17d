"""`musicedit serve`'s embedded mode (`service/embedded.py`); the whole command runs end to end
in tests/cli/test_serve.py."""

from __future__ import annotations

import shlex
import subprocess

from musicedit.client import MusiceditClient
from service.embedded import usage_banner


def test_serve_banner_download_commands_fetch_a_presigned_result(
        make_settings, run_gateway, redis_url, s3_server, s3_bucket, audio_factory):
    """With S3 storage the banner of `musicedit serve` prints the two-step download (the
    redirect URL is fetched without the key); run it with the real curl."""
    gw = run_gateway(make_settings(redis_url=redis_url, s3=(s3_server, s3_bucket)))
    with MusiceditClient(gw.url, "alice-secret-key") as client:
        job = client.submit(audio_factory(), "Add drums")
    gw.finish_job(job.id, b"edited audio bytes")
    banner = usage_banner(gw.url, "alice-secret-key", "s3")
    lines = banner[banner.index("download the result:"):].splitlines()[1:3]
    assert "Authorization" not in lines[1]
    edited = gw.context.settings.data_dir / "edited.wav"
    script = "\n".join(lines).replace("JOB_ID", job.id).replace(
        "edited.wav", shlex.quote(str(edited)))
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], check=True, timeout=30)
    assert edited.read_bytes() == b"edited audio bytes"


def test_the_dev_key_survives_restarts(tmp_path):
    from service.embedded import dev_api_key

    key = dev_api_key(tmp_path / "data")
    assert dev_api_key(tmp_path / "data") == key
    assert (tmp_path / "data" / "dev-api-key").stat().st_mode & 0o077 == 0
