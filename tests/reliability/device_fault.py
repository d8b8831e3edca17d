"""A worker whose GPU fails for good: from the 5th decode step of a job submitted with seed
`DEVICE_FAULT_SEED` on, every decode step raises the sticky CUDA error an illegal memory
access leaves behind (on a real GPU, every later call on the context fails the same way).

As a script it runs a real `musicedit worker` with that fault installed:

    python tests/reliability/device_fault.py
"""

from __future__ import annotations

import sys

DEVICE_FAULT_SEED = 707
STICKY_ERROR = "CUDA error: an illegal memory access was encountered"


def install(seed: int = DEVICE_FAULT_SEED) -> None:
    """Break the decode step of every `EditEngine` of this process once a job with `seed`
    has run a few steps."""
    from models.engine import EditEngine

    submit_codes = EditEngine.submit_codes

    def submit_and_arm(engine, request, codes, num_samples=None):  # type: ignore[no-untyped-def]
        handle = submit_codes(engine, request, codes, num_samples)
        if request.params.seed == seed and not hasattr(engine.lm, "_broken_after"):
            decode_step = engine.lm.decode_step
            calls = [0]

            def broken(*args, **kwargs):  # type: ignore[no-untyped-def]
                calls[0] += 1
                if calls[0] > 4:
                    raise RuntimeError(STICKY_ERROR)
                return decode_step(*args, **kwargs)

            engine.lm.decode_step = broken
            engine.lm._broken_after = 4
        return handle

    EditEngine.submit_codes = submit_and_arm  # type: ignore[method-assign]


if __name__ == "__main__":
    from cli.main import main

    install()
    sys.exit(main(["worker"]))
