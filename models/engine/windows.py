"""Long inputs as a chain of overlapping windows.

The model was trained on 5 s clips (250 frames); songs are minutes long. A job is cut into
windows of ``window`` frames that overlap by ``prompt`` frames. Window 0 is a plain edit.
Window w > 0 is conditioned on its own slice of the input audio and *continues* the output:
its first ``prompt`` frames are forced to the codes the previous window generated there
(audiocraft's prompted generation), and only the rest is generated. The output code stream is
therefore one continuous sequence (each window picks up exactly where the previous output
is), and it is decoded by EnCodec in one pass: there is no seam to crossfade, so no gap and
no click at the joins.

Windows of one job are sequential (each needs the previous tail); windows of different jobs
share decode batches.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """Frames ``[start, end)`` of the input; the first ``prompt`` frames are given."""

    index: int
    start: int
    end: int
    prompt: int

    @property
    def frames(self) -> int:
        return self.end - self.start

    @property
    def new_frames(self) -> int:
        return self.frames - self.prompt


def plan_windows(total_frames: int, window: int, prompt: int) -> list[Window]:
    """Cut ``total_frames`` into windows of at most ``window`` frames overlapping by ``prompt``.

    Every frame is generated exactly once; a short last window still adds at least
    ``window - prompt`` new frames unless the input ends first.

    Raises:
        ValueError: impossible sizes (prompt must leave room for new frames).
    """
    if total_frames < 1:
        raise ValueError("nothing to edit: the input has no frames")
    if not 0 <= prompt < window:
        raise ValueError(f"prompt ({prompt} frames) must be shorter than the window ({window})")
    windows = [Window(0, 0, min(window, total_frames), 0)]
    while windows[-1].end < total_frames:
        start = windows[-1].end - prompt
        windows.append(Window(len(windows), start, min(start + window, total_frames), prompt))
    return windows
