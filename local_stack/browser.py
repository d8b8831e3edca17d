"""Headless Chromium driven by selenium, for the edit page's end-to-end tests and screenshots.

Debian's `chromium` and `chromium-driver` (scripts/install-system-packages.sh); selenium is
given both paths, so it never looks for (or downloads) a browser or driver of its own. The
browser starts with a fresh profile and without any of its background network traffic: this
machine reaches only loopback.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from local_stack.processes import ServiceNotReady

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-default-apps", "--disable-extensions", "--mute-audio",
    # the tests press "play" through the page's script, as a user's click would
    "--autoplay-policy=no-user-gesture-required",
)


def chromium_available() -> bool:
    return CHROMIUM.exists() and CHROMEDRIVER.exists()


def headless_chromium(profile: Path, downloads: Path, width: int = 1280,
                      height: int = 1400) -> Any:
    """A selenium `WebDriver` for a fresh headless Chromium; `quit()` it when done.

    Args:
        profile: an empty directory for the browser's profile (`--user-data-dir`).
        downloads: where downloads land, without a prompt.
        width, height: the window, in CSS pixels.

    Raises:
        ServiceNotReady: Chromium or its driver is not installed.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    if not chromium_available():
        raise ServiceNotReady(f"{CHROMIUM} or {CHROMEDRIVER} missing: install Debian's "
                              "chromium and chromium-driver (scripts/install-system-packages.sh)")
    if profile.exists():
        shutil.rmtree(profile)
    profile.mkdir(parents=True)
    downloads.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})  # requests, for tests
    options.add_experimental_option("prefs", {
        "download.default_directory": str(downloads), "download.prompt_for_download": False,
    })
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def full_page_png(driver: Any) -> bytes:
    """A screenshot of the whole page, not only the window (Chromium's DevTools protocol)."""
    import base64

    metrics = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})
    size = metrics["cssContentSize"]
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
    })
    return base64.b64decode(shot["data"])
