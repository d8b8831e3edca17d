"""Short-lived signed stream tokens: the browser's credential for one job's event stream.

A browser's `EventSource` cannot send an `Authorization` header, and an API key must never be
in a URL (URLs end up in logs, history and `Referer` headers). So a client that holds the key
asks for a token (`POST /v1/edits/{id}/events/token`) and opens `.../events?token=...`.

A token names one job and one key and expires after `STREAM_TOKEN_SECONDS`; it only opens
that job's stream. It is `<payload>.<mac>` (base64url): the payload is
`{"k": key name, "j": job id, "e": expiry}` and the mac its HMAC-SHA256 under a secret derived
from the key's hash. Every gateway replica holds those hashes, so any replica verifies a token
without a new shared secret, and removing a key from `MUSICEDIT_API_KEYS` voids its tokens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from typing import NamedTuple

from musicedit.errors import Unauthorized
from musicedit.settings import ApiKey, Settings

TOKEN_CONTEXT = b"musicedit-stream-token-v1"


class StreamToken(NamedTuple):
    token: str
    expires_at: int


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: ApiKey, payload: str) -> str:
    # domain-separated from authentication (the hash itself) and from webhook signing
    secret = hmac.new(bytes.fromhex(key.secret_sha256), TOKEN_CONTEXT, hashlib.sha256).digest()
    return _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())


def issue_token(key: ApiKey, job_id: str, lifetime_seconds: int, now: float) -> StreamToken:
    """A token that opens job `job_id`'s event stream as `key` until `now + lifetime`."""
    expires_at = int(now) + lifetime_seconds
    payload = _b64(json.dumps({"k": key.name, "j": job_id, "e": expires_at},
                              separators=(",", ":")).encode())
    return StreamToken(f"{payload}.{_mac(key, payload)}", expires_at)


def verify_token(token: str, job_id: str, settings: Settings, now: float) -> ApiKey:
    """The key a valid token for job `job_id` was issued to.

    Raises:
        Unauthorized: malformed, forged, for another job, expired, or its key was removed.
    """
    payload, _, mac = token.partition(".")
    try:
        claims = json.loads(_unb64(payload))
        name, token_job, expires_at = str(claims["k"]), str(claims["j"]), int(claims["e"])
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise Unauthorized("The stream token is malformed; get a new one with "
                           "`POST /v1/edits/{id}/events/token`.") from exc
    key = next((key for key in settings.api_keys if key.name == name), None)
    if key is None or not hmac.compare_digest(mac, _mac(key, payload)):
        raise Unauthorized("The stream token is not valid; get a new one with "
                           "`POST /v1/edits/{id}/events/token`.")
    if token_job != job_id:
        raise Unauthorized(f"The stream token is for job {token_job}, not {job_id}; get one "
                           "for this job.")
    if expires_at < now:
        raise Unauthorized("The stream token expired; get a new one with "
                           f"`POST /v1/edits/{job_id}/events/token`.")
    return key
