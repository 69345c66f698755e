"""HTML and SVG flame graphs, checked in headless Chromium where it matters.

Screenshots land in tests/artifacts/ for a person to look at.
"""

from __future__ import annotations

import random
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from browser import (
    background,
    chart_width,
    find_frame,
    hover,
    open_page,
    page_errors,
    screenshot,
)
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from rover.export import write_profile
from rover.profile import Frame, FrameKind, ProcessInfo, Profile, ProfileType

HOT_NAME = "c_hot_spin"
NASTY_NAME = "</script><b>x</b> & \"quoted\" 'single' <img src=x onerror=alert(1)>"


# --- profiles ---------------------------------------------------------------


def user(name: str, module: str = "busy") -> Frame:
    return Frame(name, FrameKind.USER, module)


def kernel(name: str) -> Frame:
    return Frame(name, FrameKind.KERNEL, "[kernel]")


def hot_profile() -> Profile:
    """1000 samples of 'busy'; c_hot_spin (with its kernel interrupts) has 80%."""
    profile = Profile.new(
        ProfileType.ON_CPU, duration_ns=10_000_000_000, period_ns=1_000_000_000 // 99
    )
    profile.processes[100] = ProcessInfo(100, "busy")
    main = (user("_start"), user("__libc_start_main", "libc.so.6"), user("main"))
    hot = (*main, user(HOT_NAME))
    irq = (kernel("asm_sysvec_apic_timer_interrupt"), kernel("sysvec_apic_timer_interrupt"))
    write = (user("cold_path"), user("write", "libc.so.6"), kernel("entry_SYSCALL_64"))
    profile.add(100, hot, [740, 7_400_000_000])
    profile.add(100, (*hot, *irq, kernel("__irq_exit_rcu")), [60, 600_000_000])
    profile.add(100, (*main, *write, kernel("do_syscall_64"), kernel("ksys_write")), [130, 1])
    profile.add(100, (*main, Frame("busy+0x1234", FrameKind.USER, "busy", False)), [50, 1])
    profile.add(100, (*main, user("parse_args")), [20, 1])
    return profile


def random_profile(stacks: int, seed: int = 1) -> Profile:
    """Many distinct stacks: shared hot prefixes, a long tail of rare paths."""
    rng = random.Random(seed)
    profile = Profile.new(ProfileType.ON_CPU)
    for pid in range(1, 6):
        profile.processes[pid] = ProcessInfo(pid, f"worker-{pid}")
    while len(profile) < stacks:
        frames = [
            user(f"ns{level % 7}::Class{level}::method_{min(int(rng.expovariate(0.4)), 60)}()")
            for level in range(rng.randint(3, 60))
        ]
        frames += [kernel(f"kernel_fn_{rng.randrange(300)}") for _ in range(rng.randint(0, 8))]
        profile.add(rng.randint(1, 5), tuple(frames), [int(rng.paretovariate(1.2)), 1])
    return profile


# --- browser ------------------------------------------------------------------


def write_hot_html(tmp_path: Path) -> Path:
    path = tmp_path / "hot.html"
    write_profile(hot_profile(), str(path), title="busy: on-CPU")
    return path


# --- HTML in the browser -----------------------------------------------------


@pytest.mark.browser
def test_hot_frame_rendered_hover_and_colours(browser, tmp_path):
    open_page(browser, write_hot_html(tmp_path))
    assert page_errors(browser) == []
    assert browser.find_element(By.ID, "title").text == "busy: on-CPU"
    summary = browser.find_element(By.ID, "summary").text
    for expected in ("On-CPU", "1,000 samples", "10 s", "busy (100)"):
        assert expected in summary

    hot = find_frame(browser, HOT_NAME)
    assert hot is not None
    assert 0.75 < hot.rect["width"] / chart_width(browser) < 0.85
    assert hot.rect["height"] >= 10

    hover(browser, hot)
    details = browser.find_element(By.ID, "details")
    assert HOT_NAME in details.text
    assert "800 samples" in details.text
    assert "80.00%" in details.text
    screenshot(browser, "flamegraph_hover.png")

    user_color = background(find_frame(browser, "main"))
    kernel_color = background(find_frame(browser, "entry_SYSCALL_64"))
    grey = background(find_frame(browser, "busy+0x1234"))
    assert user_color != kernel_color
    assert find_frame(browser, "entry_SYSCALL_64").get_attribute("data-kind") == "kernel"
    assert find_frame(browser, "main").get_attribute("data-kind") == "user"
    assert max(grey) - min(grey) < 10  # unsymbolized frames are grey
    assert browser.find_elements(By.CSS_SELECTOR, "#legend .key[data-kind='kernel']")


@pytest.mark.browser
def test_click_zooms_and_reset_restores(browser, tmp_path):
    open_page(browser, write_hot_html(tmp_path))
    reset = browser.find_element(By.ID, "reset-zoom")
    assert not reset.is_enabled()

    find_frame(browser, HOT_NAME).click()
    hot = find_frame(browser, HOT_NAME)  # the chart is redrawn on zoom
    assert hot.rect["width"] / chart_width(browser) > 0.99
    assert find_frame(browser, "cold_path") is None  # siblings leave the view
    assert find_frame(browser, "__irq_exit_rcu").rect["width"] > 0.05 * chart_width(browser)
    assert find_frame(browser, "main").rect["width"] / chart_width(browser) > 0.99
    assert reset.is_enabled()
    hover(browser, find_frame(browser, "__irq_exit_rcu"))
    details = browser.find_element(By.ID, "details").text
    assert "6.00% of total" in details and "7.50% of zoomed frame" in details
    screenshot(browser, "flamegraph_zoomed.png")
    # Callers of the zoomed frame show their share of the total only.
    hover(browser, find_frame(browser, "main"))
    details = browser.find_element(By.ID, "details").text
    assert "100.00% of total" in details and "of zoomed frame" not in details

    reset.click()
    assert find_frame(browser, "cold_path") is not None
    assert 0.75 < find_frame(browser, HOT_NAME).rect["width"] / chart_width(browser) < 0.85
    assert not reset.is_enabled()

    # Escape and clicking the root are the other ways back.
    find_frame(browser, "cold_path").click()
    assert reset.is_enabled()
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    assert not reset.is_enabled()
    find_frame(browser, "main").click()
    assert reset.is_enabled()
    find_frame(browser, "all").click()
    assert not reset.is_enabled()
    assert page_errors(browser) == []


@pytest.mark.browser
def test_search_highlights_and_sums_matches(browser, tmp_path):
    open_page(browser, write_hot_html(tmp_path))
    before = background(find_frame(browser, "sysvec_apic_timer_interrupt"))
    main_color = background(find_frame(browser, "main"))
    browser.find_element(By.ID, "search").send_keys("apic_timer")
    result = browser.find_element(By.ID, "search-result")
    WebDriverWait(browser, 5).until(lambda d: result.text)
    # Both apic frames are on the same path: counted once, 60 of 1000 samples.
    assert result.text == "Matched: 6.00%"
    assert background(find_frame(browser, "sysvec_apic_timer_interrupt")) != before
    assert background(find_frame(browser, "main")) == main_color
    screenshot(browser, "flamegraph_search.png")


@pytest.mark.browser
def test_icicle_toggle_flips_the_layout(browser, tmp_path):
    open_page(browser, write_hot_html(tmp_path))
    chart = browser.find_element(By.ID, "flamegraph")
    toggle = browser.find_element(By.ID, "invert")
    assert chart.get_attribute("data-layout") == "flame"
    assert toggle.get_attribute("aria-pressed") == "false"

    def rows() -> tuple[float, float, float]:
        """Top edges of the root, a caller and its callee, relative to the chart."""
        top = chart.rect["y"]
        return tuple(frame_top(n) - top for n in ("all", "main", HOT_NAME))

    def frame_top(name: str) -> float:
        frame = find_frame(browser, name)
        assert frame is not None, name
        return frame.rect["y"]

    root, main, hot = rows()
    assert root > main > hot  # flame graph: root at the bottom, callees above
    assert root + find_frame(browser, "all").rect["height"] == pytest.approx(
        chart.rect["height"], abs=2
    )

    toggle.click()
    assert chart.get_attribute("data-layout") == "icicle"
    assert toggle.get_attribute("aria-pressed") == "true"
    root, main, hot = rows()
    assert root == pytest.approx(0, abs=1)  # icicle: root at the top, callees below
    assert root < main < hot
    screenshot(browser, "flamegraph_icicle.png")

    # Zoom, search and hover work the same way in the icicle layout.
    find_frame(browser, HOT_NAME).click()
    assert find_frame(browser, HOT_NAME).rect["width"] / chart_width(browser) > 0.99
    assert find_frame(browser, "cold_path") is None
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    assert chart.get_attribute("data-layout") == "icicle"
    hover(browser, find_frame(browser, HOT_NAME))
    assert "800 samples" in browser.find_element(By.ID, "details").text

    toggle.click()
    assert chart.get_attribute("data-layout") == "flame"
    root, main, _ = rows()
    assert root > main
    assert page_errors(browser) == []


@pytest.mark.browser
def test_html_is_offline_and_escapes_names(browser, tmp_path):
    profile = hot_profile()
    profile.processes[100].name = "busy <&> 'proc'"
    profile.add(100, (user("main"), user(NASTY_NAME)), [500, 1])
    path = tmp_path / "nasty.html"
    write_profile(profile, str(path), title="</title><h2>t</h2> & co")
    text = path.read_text(encoding="utf-8")
    assert "</script><b>" not in text
    assert "http://" not in text and "https://" not in text  # no CDN, no network

    open_page(browser, path)
    assert page_errors(browser) == []
    assert browser.find_elements(By.TAG_NAME, "b") == []
    assert browser.find_elements(By.TAG_NAME, "img") == []
    assert browser.find_elements(By.TAG_NAME, "h2") == []
    assert browser.find_element(By.ID, "title").text == "</title><h2>t</h2> & co"
    assert browser.title == "</title><h2>t</h2> & co"
    nasty = find_frame(browser, NASTY_NAME)
    assert nasty is not None
    assert nasty.text.startswith("</script><b>x</b>")
    hover(browser, nasty)
    assert NASTY_NAME in browser.find_element(By.ID, "details").text
    assert find_frame(browser, "busy <&> 'proc'") is not None


@pytest.mark.browser
def test_off_cpu_shows_microseconds(browser, tmp_path):
    profile = Profile.new(ProfileType.OFF_CPU, duration_ns=5_000_000_000)
    profile.processes[7] = ProcessInfo(7, "sleeper")
    profile.add(7, (user("main"), user("nanosleep"), kernel("schedule")), [4, 3_000_000_000])
    profile.add(7, (user("main"), user("read"), kernel("schedule")), [96, 1_000_000_000])
    path = tmp_path / "off.html"
    write_profile(profile, str(path))
    open_page(browser, path)
    hover(browser, find_frame(browser, "nanosleep"))
    details = browser.find_element(By.ID, "details").text
    assert "3,000,000 µs (3 s)" in details and "75.00% of total" in details
    assert "Off-CPU" in browser.find_element(By.ID, "summary").text

    write_profile(profile, str(path), value="switches")
    open_page(browser, path)
    hover(browser, find_frame(browser, "read"))
    assert "96 switches" in browser.find_element(By.ID, "details").text

    write_profile(profile, str(path), value="off_cpu")
    open_page(browser, path)
    hover(browser, find_frame(browser, "read"))
    assert "1,000,000 µs (1 s) · 25.00% of total" in browser.find_element(By.ID, "details").text
    hover(browser, find_frame(browser, "all"))
    assert "4,000,000 µs (4 s)" in browser.find_element(By.ID, "details").text


@pytest.mark.browser
def test_empty_profile_says_so(browser, tmp_path):
    path = tmp_path / "empty.html"
    write_profile(Profile.new(ProfileType.ON_CPU), str(path))
    open_page(browser, path)
    assert "No samples" in browser.find_element(By.ID, "flamegraph").text
    assert page_errors(browser) == []


@pytest.mark.browser
def test_large_profile_is_fast_small_and_usable(browser, tmp_path):
    profile = random_profile(20_000)
    path = tmp_path / "large.html"
    started = time.monotonic()
    write_profile(profile, str(path))
    elapsed = time.monotonic() - started
    size = path.stat().st_size
    assert elapsed < 10, f"writing 20k stacks took {elapsed:.1f}s"
    assert size < 3_000_000, f"HTML is {size:,} bytes"

    started = time.monotonic()
    open_page(browser, path)
    assert time.monotonic() - started < 10
    assert page_errors(browser) == []
    rendered = int(browser.find_element(By.ID, "flamegraph").get_attribute("data-rendered"))
    assert rendered > 100
    assert "frames under 0.1% of total" in browser.find_element(By.ID, "summary").text
    worker = find_frame(browser, "worker-3")
    hover(browser, worker)
    assert "worker-3" in browser.find_element(By.ID, "details").text
    screenshot(browser, "flamegraph_large.png")


@pytest.mark.browser
def test_deep_stacks_do_not_recurse(browser, tmp_path):
    profile = Profile.new(ProfileType.ON_CPU)
    profile.add(1, tuple(user(f"level_{i}") for i in range(3000)), [10, 1])
    for ext in ("html", "svg", "folded"):
        write_profile(profile, str(tmp_path / f"deep.{ext}"))
    open_page(browser, tmp_path / "deep.html")
    assert page_errors(browser) == []
    assert find_frame(browser, "level_2999") is not None


# --- SVG ---------------------------------------------------------------------

SVG_NS = {"svg": "http://www.w3.org/2000/svg"}


def svg_frames(path: Path) -> dict[str, ET.Element]:
    root = ET.parse(path).getroot()  # also proves the SVG is well-formed XML
    return {g.attrib["data-name"]: g for g in root.iterfind(".//svg:g[@class='frame']", SVG_NS)}


def test_svg_frames_widths_colours_and_tooltips(tmp_path):
    path = tmp_path / "hot.svg"
    write_profile(hot_profile(), str(path))
    frames = svg_frames(path)
    all_width = float(frames["all"].find("svg:rect", SVG_NS).get("width"))
    hot = frames[HOT_NAME]
    assert float(hot.find("svg:rect", SVG_NS).get("width")) / all_width == pytest.approx(0.8)
    assert hot.find("svg:title", SVG_NS).text == f"{HOT_NAME} (800 samples, 80.00%)"
    user_fill = frames["main"].find("svg:rect", SVG_NS).get("fill")
    kernel_fill = frames["entry_SYSCALL_64"].find("svg:rect", SVG_NS).get("fill")
    assert user_fill != kernel_fill
    # A caller sits one row below its callee (root at the bottom).
    main_y = float(frames["main"].find("svg:rect", SVG_NS).get("y"))
    assert float(hot.find("svg:rect", SVG_NS).get("y")) < main_y


def test_svg_escapes_names(tmp_path):
    profile = hot_profile()
    profile.add(100, (user("main"), user(NASTY_NAME + "\x01")), [500, 1])
    path = tmp_path / "nasty.svg"
    write_profile(profile, str(path), title="<svg> & co")
    frames = svg_frames(path)
    assert NASTY_NAME + "\ufffd" in frames
    assert "</script><b>" not in path.read_text(encoding="utf-8")


@pytest.mark.browser
def test_svg_renders_and_zooms_in_browser(browser, tmp_path):
    path = tmp_path / "hot.svg"
    write_profile(hot_profile(), str(path))
    browser.get(path.as_uri())
    frames = browser.find_elements(By.CSS_SELECTOR, "g.frame")
    assert len(frames) == 16
    assert browser.find_element(By.ID, "hint").is_displayed()
    screenshot(browser, "flamegraph_svg.png")

    def svg_frame(name: str) -> WebElement:
        return browser.find_element(By.CSS_SELECTOR, f"g.frame[data-name='{name}']")

    def rect_width(name: str) -> float:
        width = svg_frame(name).find_element(By.TAG_NAME, "rect").get_attribute("width")
        assert width is not None, name
        return float(width)

    graph_width = rect_width("all")
    assert rect_width(HOT_NAME) / graph_width == pytest.approx(0.8)
    svg_frame(HOT_NAME).click()
    assert rect_width(HOT_NAME) == pytest.approx(graph_width)
    assert not svg_frame("cold_path").is_displayed()
    assert rect_width("__irq_exit_rcu") / graph_width == pytest.approx(60 / 800, abs=0.001)
    assert svg_frame("c_hot_spin").find_element(By.TAG_NAME, "text").text == HOT_NAME
    screenshot(browser, "flamegraph_svg_zoomed.png")
    ActionChains(browser).send_keys(Keys.ESCAPE).perform()
    assert svg_frame("cold_path").is_displayed()
    assert rect_width(HOT_NAME) / graph_width == pytest.approx(0.8)
    assert page_errors(browser) == []
