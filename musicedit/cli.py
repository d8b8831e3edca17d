"""`musicedit` command line: edit a file offline, run the service, run a worker, handle dead
letters.

Model code (torch) is imported only by the commands that need it, so the gateway's image can
install this package without torch.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from pathlib import Path


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny",
                        help="tiny | small-random | large | a model directory (default: tiny)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="where random presets are written (default: the worker's, "
                        "MUSICEDIT_MODEL_CACHE_DIR or <MUSICEDIT_DATA_DIR>/models)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")


def _edit(args: argparse.Namespace) -> int:
    import torch

    from models.audio import OUTPUT_FORMATS, SILENCE_PEAK_THRESHOLD, read_audio, write_audio
    from models.checkpoint import CheckpointError
    from models.engine import EditEngine, EditRequest, EngineConfig
    from models.loader import load_model, model_stems
    from models.presets import resolve_model
    from models.sampling import SamplingParams
    from musicedit.audio_probe import AudioLimits, probe_audio
    from musicedit.errors import MusiceditError
    from musicedit.instructions import normalize_instruction
    from musicedit.settings import Settings

    limits = AudioLimits(min_seconds=0.05, max_seconds=args.max_seconds, max_sample_rate=768_000,
                         max_channels=64, silence_peak_threshold=SILENCE_PEAK_THRESHOLD)
    # Everything that needs no weights is checked before the (possibly minutes-long) model load.
    try:
        fmt = _output_format(args.output, OUTPUT_FORMATS)
        info = probe_audio(args.input, limits)
        files = resolve_model(args.model, args.cache_dir or Settings().effective_model_cache_dir)
        instruction = normalize_instruction(args.instruction, model_stems(files))
        params = SamplingParams(seed=args.seed, top_k=args.top_k, top_p=args.top_p,
                                temperature=args.temperature, cfg_coef=args.cfg)
    except (MusiceditError, CheckpointError, OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    started = time.perf_counter()
    try:
        model = load_model(files, device=device)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    loaded = time.perf_counter()
    # The engine edits any length (5 s windows, each continuing the previous one's output);
    # for one window it computes exactly the reference path (models.reference.edit).
    engine = EditEngine(model, EngineConfig(max_batch_size=1, max_input_seconds=args.max_seconds))
    wav, rate = read_audio(args.input)

    def progress(done: int, total: int) -> None:
        print(f"\r{done}/{total} frames", end="", file=sys.stderr, flush=True)

    engine.start()
    try:  # submit checks the sampling parameters against the model's codebook size
        handle = engine.submit(EditRequest("cli", wav, rate, instruction.text, params, progress))
        result = handle.result()
    except (ValueError, MusiceditError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        engine.stop()
    print(file=sys.stderr)
    out_rate = info.sample_rate if args.keep_rate else None
    write_audio(args.output, result.audio, model.sample_rate, fmt, output_rate=out_rate)
    done = time.perf_counter()
    print(f"{args.output}: {info.duration_seconds:.2f} s edited with '{instruction.text}' "
          f"(model load {loaded - started:.1f} s, edit {done - loaded:.1f} s)")
    return 0


def _output_format(output: Path, formats: Iterable[str]) -> str:
    """The output format the file's extension names (``.wav`` -> ``wav``).

    Raises:
        ValueError: the extension is not one of ``formats`` (the data would not match the name).
    """
    suffix = output.suffix.lower().lstrip(".")
    if suffix not in formats:
        raise ValueError(f"cannot write {output.name!r}: edits are written as "
                         f"{' or '.join(f.upper() for f in formats)}; name the output "
                         f"{' or '.join(f'.{f}' for f in formats)}")
    return suffix


def _worker(args: argparse.Namespace) -> int:
    from musicedit.logs import configure_logging
    from musicedit.settings import get_settings

    settings = get_settings()
    configure_logging(settings.log_level)
    from worker.app import app, worker_argv  # loads torch; the gateway never imports this

    app.worker_main(worker_argv(settings))
    return 0


def _dev_api_key(data_dir: Path) -> str:
    """A random key kept in `<data_dir>/dev-api-key`, so it survives restarts of `serve`."""
    import secrets

    path = data_dir / "dev-api-key"
    if path.is_file():
        return path.read_text().strip()
    key = secrets.token_urlsafe(24)
    data_dir.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.write_text(key + "\n")
    return key


def _usage_banner(base_url: str, api_key: str | None, storage_backend: str = "local") -> str:
    key = api_key or "<one of your MUSICEDIT_API_KEYS secrets>"
    auth = f'-H "Authorization: Bearer {key}"'
    audio_url = f"{base_url}/v1/edits/JOB_ID/audio"
    if storage_backend == "s3":
        # 302 to a presigned URL: fetch it without the key (curl -L before 7.83 forwards the
        # Authorization header to the same host on another port, and S3 refuses both at once)
        download = [
            f"  URL=$(curl -s -o /dev/null -w '%{{redirect_url}}' {auth} {audio_url})",
            '  curl -s -o edited.wav "$URL"',
        ]
    else:  # local storage: the gateway answers with the file itself
        download = [f"  curl -s {auth} -o edited.wav {audio_url}"]
    return "\n".join([
        f"musicedit is ready on {base_url} (API docs: {base_url}/docs)",
        *([f"dev API key (saved in the data dir): {api_key}"] if api_key else []),
        "submit an edit:",
        f'  curl -s {auth} -F file=@song.wav -F instruction="Add drums" {base_url}/v1/edits',
        "poll it (use the id from the answer):",
        f"  curl -s {auth} {base_url}/v1/edits/JOB_ID",
        "download the result:",
        *download,
        "Ctrl-C stops the gateway and the worker.",
    ])


def _serve(args: argparse.Namespace) -> int:
    """Gateway (uvicorn, this process) + one worker subprocess, embedded defaults."""
    import os
    import signal
    import subprocess
    import threading

    import uvicorn

    from musicedit.errors import MusiceditError
    from musicedit.logs import configure_logging
    from musicedit.settings import Settings
    from service.app import create_app

    settings = Settings()
    configure_logging(settings.log_level)
    data_dir = settings.data_dir.resolve()
    overrides: dict[str, str] = {"MUSICEDIT_DATA_DIR": str(data_dir)}
    dev_key = None
    if not settings.api_keys:
        dev_key = _dev_api_key(data_dir)
        overrides["MUSICEDIT_API_KEYS"] = f"dev:{dev_key}"
    settings = Settings(**{name.removeprefix("MUSICEDIT_").lower(): value
                           for name, value in overrides.items()})
    worker = subprocess.Popen(
        [sys.executable, "-m", "musicedit.cli", "worker"],
        env={**os.environ, **overrides},
        start_new_session=True,  # Ctrl-C reaches only this process, which stops the worker
    )
    app = create_app(settings)
    store = app.state.context.store
    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.host, port=settings.port, http="httptools", loop="uvloop",
        log_config=None, access_log=False))
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    base_url = f"http://{host}:{settings.port}"

    def supervise() -> None:
        announced = False
        while worker.poll() is None and not server.should_exit:
            if not announced and server.started:
                try:
                    ready = bool(store.live_workers(settings.worker_heartbeat_ttl_seconds))
                except MusiceditError:
                    ready = False
                if ready:
                    print(_usage_banner(base_url, dev_key, settings.storage_backend), flush=True)
                    announced = True
            time.sleep(0.5)
        if worker.poll() is not None and not server.should_exit:
            print(f"error: the worker exited with code {worker.returncode}; stopping",
                  file=sys.stderr, flush=True)
            server.should_exit = True

    print(f"starting musicedit on {base_url}; the worker is loading the model...", flush=True)
    threading.Thread(target=supervise, name="supervise-worker", daemon=True).start()
    # uvicorn re-raises the signal that stopped it: make SIGTERM land here like Ctrl-C
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)  # warm shutdown: jobs finish or go back
            try:
                worker.wait(timeout=settings.worker_shutdown_grace_seconds + 15)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                worker.kill()
                worker.wait()
    return 0 if worker.returncode in (0, -signal.SIGTERM) else 1


def _dead_letters(args: argparse.Namespace) -> int:
    """Inspect, requeue or delete dead letters in the job store the settings name."""
    import datetime
    import json

    from musicedit.errors import MusiceditError
    from musicedit.job_store import make_job_store
    from musicedit.queue import enqueue_edit, make_celery
    from musicedit.retention import object_keys
    from musicedit.settings import Settings
    from musicedit.storage import make_storage

    settings = Settings()
    store = make_job_store(settings)
    try:
        if args.action == "list":
            jobs = store.dead_letters(limit=args.limit)
            if args.json:
                print(json.dumps([job.model_dump(mode="json") for job in jobs], indent=2))
                return 0
            kept = settings.dead_letter_retention_seconds / 86400
            print(f"{len(jobs)} dead letter(s) (kept {kept:g} days after they fail)")
            for job in jobs:
                when = datetime.datetime.fromtimestamp(
                    job.timings.finished_at or 0, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
                error = (job.error or "").replace("\n", " ")
                print(f"{job.id}  {when}Z  owner={job.owner}  attempts={job.attempts}  "
                      f"{job.instruction.text!r}  input={job.input_key}\n    {error}")
            return 0
        job = store.get(args.job_id)
        if not job.dead_lettered:
            print(f"error: job {args.job_id} is {job.state.value}, not a dead letter",
                  file=sys.stderr)
            return 2
        if args.action == "show":
            print(job.model_dump_json(indent=2))
        elif args.action == "requeue":
            if not make_storage(settings).exists(job.input_key):
                print(f"error: the input {job.input_key} of job {job.id} is gone; it cannot "
                      "run again", file=sys.stderr)
                return 2
            store.requeue_dead_letter(job.id)
            enqueue_edit(make_celery(settings), job.id)
            print(f"requeued {job.id}; follow it with GET /v1/edits/{job.id}")
        else:  # purge
            storage = make_storage(settings)
            for key in object_keys(job):
                if storage.exists(key):
                    storage.delete(key)
            store.remove_expired(job.id)
            print(f"deleted {job.id} and its stored objects")
        return 0
    except MusiceditError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()


def main(argv: list[str] | None = None) -> int:
    from musicedit.jobs import SamplingParams

    parser = argparse.ArgumentParser(prog="musicedit", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    edit_p = sub.add_parser("edit", help="edit one audio file offline")
    edit_p.add_argument("input", type=Path, help="WAV, FLAC, OGG or MP3 file")
    edit_p.add_argument("instruction", help='for example "Add drums", "Remove the bass", "Only guitar"')
    edit_p.add_argument("-o", "--output", type=Path, required=True,
                        help="output file: .wav or .flac (the extension sets the format)")
    _add_model_args(edit_p)
    defaults = SamplingParams()  # the API's defaults (the paper's), without importing torch
    edit_p.add_argument("--seed", type=int, default=0)
    edit_p.add_argument("--top-k", type=int, default=defaults.top_k)
    edit_p.add_argument("--top-p", type=float, default=defaults.top_p)
    edit_p.add_argument("--temperature", type=float, default=defaults.temperature)
    edit_p.add_argument("--cfg", type=float, default=defaults.cfg_coef,
                        help="classifier-free guidance coefficient")
    edit_p.add_argument("--keep-rate", action="store_true",
                        help="write at the input's sample rate instead of 32 kHz")
    edit_p.add_argument("--max-seconds", type=float, default=300.0,
                        help="longest input accepted (default 300 s)")
    edit_p.set_defaults(func=_edit)

    serve_p = sub.add_parser(
        "serve", help="run the gateway and one worker here (embedded defaults: no Redis, S3 or "
        "GPU needed; configure with MUSICEDIT_* variables)")
    serve_p.set_defaults(func=_serve)
    worker_p = sub.add_parser(
        "worker", help="run a Celery worker with the model (configure with MUSICEDIT_* variables)")
    worker_p.set_defaults(func=_worker)

    dead_p = sub.add_parser(
        "dead-letters", help="list, show, requeue or delete dead letters (jobs failed for good "
        "after MAX_ATTEMPTS abandoned attempts or a model/storage fault; configure with "
        "MUSICEDIT_* variables)")
    dead_sub = dead_p.add_subparsers(dest="action", required=True)
    list_p = dead_sub.add_parser("list", help="newest first")
    list_p.add_argument("--limit", type=int, default=100)
    list_p.add_argument("--json", action="store_true", help="full records as JSON")
    for action, text in (("show", "print one dead letter's full record as JSON"),
                         ("requeue", "queue it again as a fresh job (after fixing the cause)"),
                         ("purge", "delete it and its stored input now")):
        action_p = dead_sub.add_parser(action, help=text)
        action_p.add_argument("job_id")
    dead_p.set_defaults(func=_dead_letters)

    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
