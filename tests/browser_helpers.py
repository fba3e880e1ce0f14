"""Test helper: headless Chromium through selenium, for the pages people open (the judging app, the HTML report).

Needs the Debian packages ``chromium`` and ``chromium-driver`` and the pip package ``selenium`` (``make test`` installs
them where it can); :data:`needs_browser` skips a test, saying why, where they are missing.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
try:
    import selenium  # noqa: F401
except ImportError:  # pragma: no cover - see the skip reason
    HAVE_SELENIUM = False
else:
    HAVE_SELENIUM = True

needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER and HAVE_SELENIUM),
    reason="needs apt packages chromium + chromium-driver and pip package selenium",
)
WAIT_S = 20
"""Seconds a page load or a wait may take."""

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver


@contextmanager
def chromium(*flags: str, console_log: bool = False) -> Iterator[WebDriver]:
    """A headless Chromium driver (extra command-line ``flags``; ``console_log``: keep the console for
    ``driver.get_log("browser")``), quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", *flags):
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    if console_log:
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()
