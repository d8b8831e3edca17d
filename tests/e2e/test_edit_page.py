"""The edit page (`/`) in headless Chromium against the real stack: the gateway in its own
process, a Celery worker with the `tiny` model, Redis and SeaweedFS S3.

What a person does, in order: paste a key, pick a clip, choose an instruction, watch the
state and progress move (from the event stream), play the result and switch A/B, download it,
start a second round from it; and the error path: a bad instruction shows the server's own
message. Screenshots of each run land in the test's directory.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from local_stack import API_KEYS, GatewayProcess, WorkerProcess, stack_values, wait_until
from local_stack.browser import chromium_available, full_page_png, headless_chromium
from musicedit.client import MusiceditClient

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not chromium_available(), reason="needs Debian's chromium and "
                       "chromium-driver (make setup installs them)"),
]

REDIS_DB = 5  # this module's own database on the session's redis-server
KEY = API_KEYS["alice"]


def melody(path: Path, seconds: float = 6.0, rate: int = 32000) -> Path:
    """A clip with something to see: a few decaying notes over a soft pulse, stereo."""
    t = np.arange(int(seconds * rate)) / rate
    notes = [220.0, 277.2, 329.6, 440.0, 329.6, 277.2]
    beat = seconds / len(notes)
    index = np.minimum((t // beat).astype(int), len(notes) - 1)
    phase = t - index * beat
    tone = np.sin(2 * np.pi * np.array(notes)[index] * t) * np.exp(-3 * phase)
    pulse = np.sin(2 * np.pi * 60 * t) * np.exp(-20 * (t % (beat / 2)))
    mono = 0.4 * tone + 0.3 * pulse
    sf.write(path, np.stack([mono, 0.8 * mono], axis=1).astype("float32"), rate)
    return path


@dataclass
class Stack:
    url: str
    client: MusiceditClient
    directory: Path


@pytest.fixture(scope="module")
def stack(redis_server, s3_server, model_cache, tmp_path_factory) -> Iterator[Stack]:
    redis_client = redis_server.client()
    redis_client.select(REDIS_DB)
    redis_client.flushdb()
    root = tmp_path_factory.mktemp("page")
    values = stack_values(
        root / "var", redis_url=f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}",
        s3=(s3_server, s3_server.create_bucket()), model="tiny",
        model_cache_dir=str(model_cache), worker_progress_interval_seconds="0.2",
        events_poll_interval_seconds="0.2", max_batch_size="2")
    gateway = GatewayProcess(values, root / "gateway.log").start()
    worker = WorkerProcess(values, root / "worker.log").start()
    client = MusiceditClient(gateway.url, KEY)
    yield Stack(gateway.url, client, root)
    client.close()
    worker.stop()
    gateway.stop()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    driver = headless_chromium(tmp_path / "profile", tmp_path / "downloads")
    yield driver
    driver.quit()


def element_text(driver: Any, element_id: str) -> str:
    return str(driver.execute_script(
        "return document.getElementById(arguments[0]).textContent", element_id))


def visible(driver: Any, element_id: str) -> bool:
    return bool(driver.execute_script(
        "const e = document.getElementById(arguments[0]); return !!e && !e.closest('[hidden]')",
        element_id))


def paste_key(driver: Any, url: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    driver.get(url + "/")
    driver.find_element(By.ID, "api-key").send_keys(KEY, Keys.ENTER)  # the keyboard's way
    wait_until(lambda: visible(driver, "edit-section") and driver.execute_script(
        "return document.getElementById('instruction-choice').options.length > 1"), 30,
        "the page to load capabilities")


def submit(driver: Any, clip: Path | None, instruction: str) -> None:
    from selenium.webdriver.common.by import By

    fill(driver, clip, instruction)
    driver.find_element(By.ID, "submit").click()


def fill(driver: Any, clip: Path | None, instruction: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    if clip is not None:
        driver.find_element(By.ID, "file").send_keys(str(clip))
    if instruction in [o.text for o in Select(driver.find_element(
            By.ID, "instruction-choice")).options]:
        Select(driver.find_element(By.ID, "instruction-choice")).select_by_visible_text(
            instruction)
    else:
        field = driver.find_element(By.ID, "instruction")
        field.clear()
        field.send_keys(instruction)


def watch_job(driver: Any, previous: str = "",
              timeout: float = 240.0) -> tuple[str, list[str], list[float]]:
    """Poll the page (not the API) until a job other than `previous` ends: its id, the
    states and the progress values it showed."""
    states: list[str] = []
    fractions: list[float] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job_id, state, fraction = driver.execute_script(
            "return [document.getElementById('job-id').textContent,"
            " document.getElementById('job-state').textContent,"
            " document.getElementById('job-progress').value]")
        if job_id == previous:
            time.sleep(0.05)
            continue
        if state and (not states or states[-1] != state):
            states.append(state)
        if not fractions or fractions[-1] != fraction:
            fractions.append(float(fraction))
        if state in ("succeeded", "failed", "canceled"):
            return job_id, states, fractions
        time.sleep(0.05)
    raise TimeoutError(f"the page showed {states} for {timeout} s")


def wait_results(driver: Any, job_id: str) -> None:
    wait_until(lambda: driver.execute_script(
        "return document.getElementById('results').dataset.drawn") == job_id, 60,
        "the results to be drawn")


def canvas_is_drawn(driver: Any, canvas_id: str) -> bool:
    """More than one colour on the canvas."""
    return bool(driver.execute_script("""
        const c = document.getElementById(arguments[0]);
        const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        const seen = new Set();
        for (let i = 0; i < d.length; i += 4 * 97) seen.add(d[i] << 16 | d[i + 1] << 8 | d[i + 2]);
        return seen.size > 8;""", canvas_id))


def play_then_switch(driver: Any) -> tuple[float, float]:
    """Play the edited audio, switch A/B with the page's button; (position before, after)."""
    from selenium.webdriver.common.by import By

    driver.execute_script("document.getElementById('edited-audio').play()")
    wait_until(lambda: driver.execute_script(
        "const a = document.getElementById('edited-audio');"
        "return !a.paused && a.currentTime > 0.5"), 30, "the edited audio to play")
    before = float(driver.execute_script(
        "return document.getElementById('edited-audio').currentTime"))
    driver.find_element(By.ID, "ab-switch").click()
    after = float(driver.execute_script(
        "return document.getElementById('original-audio').currentTime"))
    wait_until(lambda: driver.execute_script(
        "return !document.getElementById('original-audio').paused"), 10,
        "the original to play on")
    assert driver.execute_script("return document.getElementById('edited-audio').paused")
    return before, after


def test_paste_a_key_edit_watch_play_download_and_edit_again(stack, browser, tmp_path):
    from selenium.webdriver.common.by import By

    clip = melody(tmp_path / "melody.wav")
    paste_key(browser, stack.url)
    assert browser.execute_script("return sessionStorage.getItem('musicedit.apiKey')") == KEY
    assert KEY not in browser.current_url
    fill(browser, clip, "Add drums")
    wait_until(lambda: canvas_is_drawn(browser, "clip-wave"), 10, "the clip's waveform")
    (stack.directory / "page-before.png").write_bytes(full_page_png(browser))
    browser.find_element(By.ID, "submit").click()
    job_id, states, fractions = watch_job(browser)
    assert states[-1] == "succeeded", states
    assert "running" in states
    assert any(0 < f < 1 for f in fractions), fractions  # the bar moved, live
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    wait_results(browser, job_id)
    for canvas in ("original-wave", "original-spec", "edited-wave", "edited-spec"):
        assert canvas_is_drawn(browser, canvas), canvas

    before, after = play_then_switch(browser)
    assert abs(after - before) < 0.3  # A/B keeps the playback position
    browser.execute_script("document.getElementById('original-audio').pause()")
    (stack.directory / "page-after.png").write_bytes(full_page_png(browser))

    browser.find_element(By.ID, "download").click()
    downloads = tmp_path / "downloads"
    wait_until(lambda: any(p.suffix == ".wav" for p in downloads.iterdir()), 30, "the download")
    downloaded = next(p for p in downloads.iterdir() if p.suffix == ".wav")
    assert downloaded.name == f"edited-{job_id}.wav"
    assert downloaded.read_bytes() == stack.client.download(job_id)

    # the second round starts from the result, and edits only a range of it
    features = stack.client.capabilities().features
    assert features["source_jobs"] and features["time_ranges"]
    browser.find_element(By.ID, "edit-again").click()
    for field, value in (("start-seconds", "1.5"), ("end-seconds", "3.5")):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    submit(browser, None, "Remove the drums")
    second_id, states, _ = watch_job(browser, previous=job_id)
    assert second_id != job_id and states[-1] == "succeeded"
    wait_results(browser, second_id)
    second = stack.client.get(second_id)
    assert (second.instruction.operation, second.instruction.stem) == ("remove", "Drums")
    assert second.source_job_id == job_id
    assert second.time_range is not None
    assert (second.time_range.start_seconds, second.time_range.end_seconds) == (1.5, 3.5)
    assert canvas_is_drawn(browser, "original-wave")  # the first result, now the original

    # both jobs are listed and the first one reopens with its result
    requested = [json.loads(entry["message"])["message"] for entry in browser.get_log(
        "performance")]
    urls = [m["params"]["request"]["url"] for m in requested
            if m["method"] == "Network.requestWillBeSent"]
    assert any("/events?token=" in url for url in urls)  # EventSource, with a stream token
    assert not [url for url in urls if KEY in url]       # never the key

    browser.find_element(By.ID, "refresh-recent").click()
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, f"[data-job-id='{job_id}']"), 10,
               "the first job in the list")
    browser.find_element(By.CSS_SELECTOR, f"[data-job-id='{job_id}']").click()
    wait_results(browser, job_id)
    assert element_text(browser, "job-state") == "succeeded"


def test_a_bad_instruction_shows_the_servers_message(stack, browser, tmp_path):
    clip = melody(tmp_path / "melody.wav", seconds=2.0)
    paste_key(browser, stack.url)
    submit(browser, clip, "make it jazzy")
    wait_until(lambda: visible(browser, "error"), 30, "the error")
    shown = element_text(browser, "error")
    problem = httpx.post(f"{stack.url}/v1/edits", headers={"Authorization": f"Bearer {KEY}"},
                         files={"file": clip.read_bytes()},
                         data={"instruction": "make it jazzy"}).json()
    assert problem["status"] == 422
    assert problem["detail"] in shown  # as the server wrote it
    assert not visible(browser, "job-section")


def test_every_control_is_labelled_and_the_page_fits_a_phone(stack, tmp_path):
    phone = headless_chromium(tmp_path / "profile", tmp_path / "downloads", width=390,
                              height=844)
    try:
        paste_key(phone, stack.url)
        unlabelled = phone.execute_script("""
            return [...document.querySelectorAll('input, select, button, audio, canvas')]
              .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')
                           && !e.getAttribute('aria-labelledby') && !e.textContent.trim())
              .map(e => e.id || e.outerHTML.slice(0, 60));""")
        assert unlabelled == [] or set(unlabelled) <= {"clip-audio", "original-audio",
                                                       "edited-audio"}
        overflow = phone.execute_script(
            "return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0
    finally:
        phone.quit()


def test_the_page_works_offline_and_keeps_the_key_out_of_urls(stack):
    page = httpx.get(stack.url + "/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers[
        "content-security-policy"]
    for asset in ("/page/app.js", "/page/audio_view.js", "/page/style.css"):
        body = httpx.get(stack.url + asset).text
        assert "http://" not in body and "https://" not in body, asset  # no CDN
    assert "/docs" in page.text
    docs = httpx.get(stack.url + "/openapi.json").json()["info"]["description"]
    assert "](/)" in docs  # /docs links the page

