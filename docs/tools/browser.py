"""Headless Chromium for the page checks and the README screenshot.

The browser and its driver are the system's (Debian: ``apt-get install chromium
chromium-driver``), found on ``PATH``; nothing here downloads either: Selenium Manager
is switched off (``SE_OFFLINE``) and is never asked, since both paths are given.
"""

from __future__ import annotations

import os
import shutil

from selenium import webdriver
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.chrome.service import Service

#: names the browser and its driver go by on PATH, in the order they are tried
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVERS = ("chromedriver",)
INSTALL_HINT = "apt-get install chromium chromium-driver"


class BrowserUnavailable(RuntimeError):
    """No browser or driver on this machine, or the browser would not start."""


def find(names: tuple[str, ...]) -> str | None:
    """The first of ``names`` on PATH, as a full path."""
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def chromium(width: int = 1440, height: int = 1000) -> webdriver.Chrome:
    """A headless Chromium whose window is ``width`` × ``height`` px, with the page's
    console messages kept for ``driver.get_log("browser")``.

    Raises:
        BrowserUnavailable: the browser or the driver is not on PATH, or it did not start
            (one line saying which, and how to install them).
    """
    binary = find(BROWSERS)
    driver_path = find(DRIVERS)
    if binary is None or driver_path is None:
        missing = "chromium" if binary is None else "chromium-driver"
        raise BrowserUnavailable(f"{missing} not installed: {INSTALL_HINT}")
    os.environ["SE_OFFLINE"] = "true"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    options.add_argument("--headless=new")
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # Chromium refuses root with a sandbox
        options.add_argument("--no-sandbox")
    options.add_argument("--disable-dev-shm-usage")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    try:
        return webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    except WebDriverException as e:
        why = ((e.msg or str(e)).strip().splitlines() or ["no message"])[0]
        why = why.split("; For documentation on this error")[0]
        raise BrowserUnavailable(f"{binary} with {driver_path} did not start: {why}") from e
