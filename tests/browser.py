"""Headless Chromium (Debian's chromium + chromedriver) for flame graph tests.

Never downloads a browser or driver: both paths are explicit, and a missing
one fails the test with what to install.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A headless Chromium driver shared by one test module."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            pytest.fail(f"{path} is missing: apt-get install chromium chromium-driver")
    options = Options()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-quic",
        "--window-size=1280,900",
    ):
        options.add_argument(arg)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path makes Selenium skip selenium-manager (no downloads).
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    yield driver
    driver.quit()


def open_page(driver, path: Path) -> None:
    driver.get(path.as_uri())
    WebDriverWait(driver, 10).until(
        lambda d: d.execute_script(
            "var c = document.getElementById('flamegraph'); return c && c.dataset.rendered;"
        )
    )


def page_errors(driver) -> list[str]:
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def find_frame(driver, name: str) -> WebElement | None:
    return driver.execute_script(
        "var name = arguments[0];"
        "return Array.from(document.querySelectorAll('#flamegraph .frame'))"
        ".find(function (e) { return e.dataset.name === name; }) || null;",
        name,
    )


def chart_width(driver) -> float:
    return driver.find_element(By.ID, "flamegraph").rect["width"]


def background(element: WebElement) -> tuple[int, ...]:
    color = element.value_of_css_property("background-color")
    return tuple(int(c) for c in re.findall(r"\d+", color)[:3])


def hover(driver, element: WebElement) -> None:
    # Centre it first: at the window's bottom edge the sticky #details covers it.
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    ActionChains(driver).move_to_element(element).perform()


def screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    driver.save_screenshot(str(path))
    return path
