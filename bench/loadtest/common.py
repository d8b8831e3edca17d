"""Shared pieces of the load tests: test clips, loopback guard, percentiles, /metrics scraping."""

from __future__ import annotations

import io
import ipaddress
import math
import socket
from collections.abc import Iterable, Sequence
from urllib.parse import urlsplit

import numpy as np
import soundfile as sf

INSTRUCTIONS = ("Add drums", "Remove the bass", "Only piano", "Add guitar", "No drums")


CLIP_FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"),
                "mp3": ("MP3", "MPEG_LAYER_III"), "ogg": ("OGG", "VORBIS")}


def make_clip(seconds: float, sample_rate: int = 44100, channels: int = 2, seed: int = 0,
              fmt: str = "wav") -> bytes:
    """`seconds` of music-like audio (a chord plus noise) as 16-bit WAV, FLAC, MP3 or OGG."""
    frames = int(round(seconds * sample_rate))
    rng = np.random.default_rng(seed)
    t = np.arange(frames, dtype=np.float32) / sample_rate
    chord = sum(np.sin(2 * np.pi * f * t) for f in (220.0, 277.18, 329.63)) / 3
    data = 0.3 * chord[:, None] + 0.05 * rng.standard_normal((frames, channels)).astype(np.float32)
    buffer = io.BytesIO()
    container, subtype = CLIP_FORMATS[fmt]
    sf.write(buffer, data.astype(np.float32), sample_rate, format=container, subtype=subtype)
    return buffer.getvalue()


def require_loopback(url: str) -> None:
    """Refuse any target that is not on this machine (load tests send traffic to loopback only)."""
    host = urlsplit(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as exc:
        raise SystemExit(f"cannot resolve {host!r}: {exc}") from exc
    if not addresses or not all(ipaddress.ip_address(a.split("%")[0]).is_loopback
                                for a in addresses):
        raise SystemExit(f"refusing to load-test {url}: only loopback targets "
                         "(127.0.0.0/8, localhost, [::1]) are allowed")


def percentile(values: Sequence[float], q: float) -> float:
    """The `q`-th percentile (0..100) by nearest rank; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def parse_metric(text: str, name: str) -> float | None:
    """The sum of every sample of metric `name` (labels ignored) in a Prometheus text page."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith(name) and (line[len(name):len(name) + 1] in (" ", "{")):
            total += float(line.rsplit(" ", 1)[1])
            found = True
    return total if found else None


def parse_mix(text: str) -> list[tuple[float, float]]:
    """`"5:0.6,30:0.3,180:0.1"` -> [(seconds, weight), ...] with weights summing to 1."""
    pairs = []
    for item in text.split(","):
        seconds, _, weight = item.partition(":")
        pairs.append((float(seconds), float(weight or 1)))
    total = sum(weight for _, weight in pairs)
    return [(seconds, weight / total) for seconds, weight in pairs]


def fmt_ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value * 1000:.0f}"


def fmt_s(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.1f}"


def table(rows: Iterable[Sequence[str]]) -> str:
    rows = [list(row) for row in rows]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) + " |"
             for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
