"""Differential flame graphs: the merged tree, normalization, and the page in Chromium."""

from __future__ import annotations

import pytest
from browser import background, chart_width, find_frame, hover, open_page, page_errors, screenshot
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait
from test_export_flamegraph import HOT_NAME, kernel, user

from rover.export import UnsupportedFormat, read_table, write_diff, write_profile
from rover.export.diff import diff_tree
from rover.export.stacktable import StackTable
from rover.export.tree import build_tree
from rover.export.values import select_value
from rover.profile import Frame, FrameKind, ProcessInfo, Profile, ProfileType

MAIN = (user("_start"), user("main"))


def run(hot: int, cold: int, other: int, pid: int = 100) -> Profile:
    """A run of 'busy': the hot loop, the write path and some parsing."""
    profile = Profile.new(ProfileType.ON_CPU, duration_ns=10_000_000_000)
    profile.processes[pid] = ProcessInfo(pid, "busy")
    profile.add(pid, (*MAIN, user(HOT_NAME)), [hot, hot * 10])
    profile.add(pid, (*MAIN, user("cold_path"), kernel("ksys_write")), [cold, cold * 10])
    if other:
        profile.add(pid, (*MAIN, user("parse_args")), [other, other * 10])
    return profile


def before_after() -> tuple[Profile, Profile]:
    # Before: hot 80%, cold 15%, parse 5% of 1000. After (another pid, twice the
    # samples): hot 30%, cold 70%, parse gone.
    return run(800, 150, 50), run(600, 1400, 0, pid=222)


def by_name(tree) -> dict[str, object]:
    found: dict[str, object] = {}
    pending = [tree.root]
    while pending:
        node = pending.pop()
        found.setdefault(node.name, node)
        pending.extend(node.children)
    return found


def test_tree_is_normalized_by_totals():
    before, after = before_after()
    view = select_value(before)
    tree = diff_tree(*map(StackTable.from_profile, (before, after)), view, view)
    assert (tree.before_total, tree.after_total) == (1000, 2000)
    nodes = by_name(tree)
    hot, cold, parse = nodes[HOT_NAME], nodes["cold_path"], nodes["parse_args"]
    assert (hot.before, hot.after) == (800, 600)
    assert tree.change(hot) == pytest.approx(0.30 - 0.80)
    assert tree.change(cold) == pytest.approx(0.70 - 0.15)
    assert (parse.before, parse.after) == (50, 0)  # gone, still drawn
    assert tree.weight(parse) == pytest.approx(0.05)
    assert tree.change(nodes["busy"]) == 0  # processes match by name, not pid
    assert tree.weight(tree.root) == pytest.approx(2.0)


def test_narrow_frames_are_hidden():
    before, after = before_after()
    after.add(222, (*MAIN, user("tiny")), [1, 1])
    view = select_value(before)
    tables = map(StackTable.from_profile, (before, after))
    tree = diff_tree(*tables, view, view, min_fraction=0.01)
    assert "tiny" not in by_name(tree) and tree.hidden == 1


def test_only_html_and_same_types(tmp_path):
    before, after = before_after()
    with pytest.raises(UnsupportedFormat, match="HTML"):
        write_diff(before, after, str(tmp_path / "d.svg"))
    off = Profile.new(ProfileType.OFF_CPU)
    with pytest.raises(ValueError, match="cannot compare an on-cpu profile"):
        write_diff(before, off, str(tmp_path / "d.html"))
    single = Profile(ProfileType.ON_CPU, (before.value_types[0],))
    with pytest.raises(ValueError, match="new.folded: unknown value 'cpu'"):
        write_diff(before, single, str(tmp_path / "d.html"), value="cpu", names=("a", "new.folded"))
    assert list(tmp_path.iterdir()) == []


# --- in the browser -----------------------------------------------------------------


def reddish(rgb: tuple[int, ...]) -> bool:
    r, g, b = rgb
    return r > 150 and r > g + 60 and r > b + 60


def bluish(rgb: tuple[int, ...]) -> bool:
    r, g, b = rgb
    return b > 150 and b > r + 60 and b > g + 30


@pytest.mark.browser
def test_diff_colours_and_hover(browser, tmp_path):
    before, after = before_after()
    path = tmp_path / "diff.html"
    write_diff(before, after, str(path), names=("before.pb.gz", "after.pb.gz"))
    open_page(browser, path)
    assert page_errors(browser) == []
    summary = browser.find_element(By.ID, "summary").text
    assert "before.pb.gz: 1,000 samples" in summary and "after.pb.gz: 2,000 samples" in summary
    legend = browser.find_element(By.ID, "legend").text
    assert "grew" in legend and "shrank" in legend

    cooled = background(find_frame(browser, HOT_NAME))
    heated = background(find_frame(browser, "cold_path"))
    assert bluish(cooled), cooled  # 80% -> 30%: the largest change, fully blue
    assert reddish(heated), heated  # 15% -> 70%
    unchanged = background(find_frame(browser, "main"))
    assert max(unchanged) - min(unchanged) < 20  # 100% -> 100%: neutral
    # Width: both shares together, so 'parse_args', gone now, is still there.
    hot = find_frame(browser, HOT_NAME)
    assert hot.rect["width"] / chart_width(browser) == pytest.approx((0.8 + 0.3) / 2, abs=0.01)
    assert find_frame(browser, "parse_args").get_attribute("data-after") == "0"

    hover(browser, hot)
    details = browser.find_element(By.ID, "details").text
    assert "before 800 samples (80.00%)" in details
    assert "after 600 samples (30.00%)" in details
    assert "\u221250.00 pp" in details
    screenshot(browser, "flamegraph_diff_hover.png")
    hover(browser, find_frame(browser, "cold_path"))
    details = browser.find_element(By.ID, "details").text
    assert "before 150 samples (15.00%)" in details and "after 1,400 samples (70.00%)" in details
    assert "+55.00 pp" in details

    browser.find_element(By.ID, "search").send_keys("ksys_write")
    result = browser.find_element(By.ID, "search-result")
    WebDriverWait(browser, 5).until(lambda d: result.text)
    assert result.text == "Matched: before 15.00%, after 70.00%"

    browser.find_element(By.ID, "invert").click()  # the icicle view works here too
    assert find_frame(browser, "all").rect["y"] < find_frame(browser, HOT_NAME).rect["y"]
    screenshot(browser, "flamegraph_diff_icicle.png")
    assert page_errors(browser) == []


@pytest.mark.browser
def test_noise_stays_nearly_neutral(browser, tmp_path):
    # hot 80% -> 75% (-6% of itself, the largest change in points), cold 15% -> 16% (+6%),
    # parse_args 5% -> 9% (+80%: nearly doubled)
    before, after = run(800, 150, 50), run(750, 160, 90, pid=222)
    path = tmp_path / "noise.html"
    write_diff(before, after, str(path))
    open_page(browser, path)
    for name in (HOT_NAME, "cold_path"):
        rgb = background(find_frame(browser, name))
        assert max(rgb) - min(rgb) < 40 and min(rgb) > 180, (name, rgb)  # nearly white
    assert reddish(background(find_frame(browser, "parse_args")))
    screenshot(browser, "flamegraph_diff_noise.png")
    assert page_errors(browser) == []


# --- the same profile in another format compares equal ---------------------------------

READABLE = ("folded", "pb.gz", "speedscope.json")


def mixed_profile(profile_type: ProfileType) -> Profile:
    """What real profiles hold: modules, files, build ids, kernel modules, frames without a
    symbol or a name, two processes of the same name, one without a name, odd names."""
    profile = Profile.new(profile_type, duration_ns=10_000_000_000)
    for pid in (100, 101):
        profile.processes[pid] = ProcessInfo(pid, "busy")
    start = (Frame("_start", FrameKind.USER, "busy", True, "/opt/busy", "ab12"),
             Frame("main", FrameKind.USER, "busy", True, "/opt/busy", "ab12"))  # fmt: skip
    libc = Frame("write", FrameKind.USER, "libc.so.6", True, "/usr/lib/libc.so.6")
    stacks = [
        (100, (*start, user(HOT_NAME)), [700, 2_500_999]),
        (101, (*start, user(HOT_NAME)), [100, 999]),  # merges with pid 100's by name
        (
            100,
            (
                *start,
                libc,
                kernel("ksys_write"),
                Frame("nft_do_chain", FrameKind.KERNEL, "nf_tables"),
            ),
            [150, 7_000_000],
        ),
        (100, (*start, Frame("busy+0x1234", FrameKind.USER, "busy", False, "/opt/busy")), [30, 1]),
        (100, (*start, Frame("", FrameKind.USER, "busy", True)), [5, 40_000]),
        (100, (*start, user("odd;name with spaces")), [10, 5_000]),
        (4242, (user("no_process_info"),), [5, 3_000]),
    ]
    for pid, frames, values in stacks:
        profile.add(pid, frames, values)
    return profile


def all_nodes(tree) -> list:
    found, pending = [], [tree.root]
    while pending:
        node = pending.pop()
        found.append(node)
        pending.extend(node.children)
    return found


@pytest.mark.parametrize("profile_type", list(ProfileType))
@pytest.mark.parametrize("target", READABLE)
@pytest.mark.parametrize("source", READABLE)
def test_a_converted_profile_diffs_as_equal(tmp_path, profile_type, source, target):
    first, second = tmp_path / f"first.{source}", tmp_path / f"second.{target}"
    write_profile(mixed_profile(profile_type), str(first))
    write_profile(read_table(str(first)), str(second))  # what `rover convert` does
    before, after = read_table(str(first)), read_table(str(second))
    view = select_value(before.header)
    tree = diff_tree(before, after, view, select_value(after.header, view.name), min_fraction=0)
    nodes = all_nodes(tree)
    assert tree.before_total == tree.after_total > 0
    assert [(n.name, n.before) for n in nodes if n.before != n.after] == []
    # one node per frame: no subtree of one side left alone
    assert len(nodes) == len(all_nodes(build_tree(before, view, min_fraction=0)))
