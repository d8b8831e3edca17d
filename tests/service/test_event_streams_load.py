"""200 concurrent event streams on one gateway process (`bench/event_streams.py`): every
stream gets its end, the gateway holds them without a thread each, and its memory stays flat
while events flow and across a second round."""

from __future__ import annotations

import pytest

from bench.event_streams import run


@pytest.mark.slow
def test_200_concurrent_streams_hold_no_thread_each_and_flat_memory(tmp_path):
    result = run(tmp_path, streams=200, jobs=40, hold=2.0, rounds=2)
    print("\n" + result.table())
    assert result.ends == [200, 200]
    # the shared thread pool (40 workers) serves every request; nothing grows per stream
    assert result.threads("round 1: 200 streams open") < 100
    assert result.threads("round 2: 200 streams open") <= result.threads(
        "round 1: 200 streams open")
    held = result.rss("round 1: after 2 s of progress") - result.rss("round 1: 200 streams open")
    assert held < 5.0  # MB, while ~4000 events flow
    second = result.rss("round 2: 200 streams open") - result.rss("round 1: 200 streams open")
    assert second < 5.0  # MB: the first round's streams left nothing behind
