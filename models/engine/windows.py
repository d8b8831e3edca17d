"""Long inputs as a chain of overlapping windows.

The model was trained on 5 s clips (250 frames); songs are minutes long. A job is cut into
windows of `window` frames that overlap by `prompt` frames. Window 0 is a plain edit.
Window w > 0 is conditioned on its own slice of the input audio and *continues* the output:
its first `prompt` frames are forced to the codes the previous window generated there
(audiocraft's prompted generation), and only the rest is generated. The output code stream is
therefore one continuous sequence (each window picks up exactly where the previous output
is), and it is decoded by EnCodec in one pass: there is no seam to crossfade, so no gap and
no click at the joins.

Windows of one job are sequential (each needs the previous tail); windows of different jobs
share decode batches. A time-range edit plans windows over its range only, the first one
prompted with the input's codes just before the range.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """Frames `[start, end)` of the input; the first `prompt` frames are given."""

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


def plan_windows(total_frames: int, window: int, prompt: int,
                 start: int = 0) -> list[Window]:
    """Cut frames `[start, total_frames)` into windows of at most `window` frames that overlap
    by `prompt`.

    Every frame of the range is generated exactly once; a short last window still adds at
    least `window - prompt` new frames unless the range ends first. When the range starts
    after the clip's start (a time-range edit), window 0 is prompted with up to `prompt`
    frames before `start`: the edit continues the input's own codes.

    Raises:
        ValueError: impossible sizes (prompt must leave room for new frames) or an empty range.
    """
    if not 0 <= start < total_frames:
        raise ValueError(f"nothing to edit: frames [{start}, {total_frames}) are empty")
    if not 0 <= prompt < window:
        raise ValueError(f"prompt ({prompt} frames) must be shorter than the window ({window})")
    first_prompt = min(prompt, start)
    first = start - first_prompt
    windows = [Window(0, first, min(first + window, total_frames), first_prompt)]
    while windows[-1].end < total_frames:
        begin = windows[-1].end - prompt
        windows.append(Window(len(windows), begin, min(begin + window, total_frames), prompt))
    return windows
