"""open_in_root: symlinks and ``..`` resolve inside the root, in both ways of resolving."""

from __future__ import annotations

import errno
import os
import signal
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from rover import rooted_open
from rover.rooted_open import open_in_root

LIMIT = 1 << 20


@pytest.fixture(params=["openat2", "walk"])
def resolver(request: pytest.FixtureRequest) -> Iterator[str]:
    """Each test runs with the kernel's RESOLVE_IN_ROOT and with our own walk."""
    rooted_open.use_openat2(request.param == "openat2")
    try:
        yield request.param
    finally:
        rooted_open.use_openat2(None)


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """A root with a decoy ``/etc/secret`` inside it, and the real one outside it."""
    outside = tmp_path / "host"
    (outside / "etc").mkdir(parents=True)
    (outside / "etc/secret").write_text("7f00 10 HOST_SECRET\n")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc/secret").write_text("inside\n")
    (root / "tmp").mkdir()
    return root, outside


def read(root: Path, path: str, limit: int = LIMIT) -> bytes:
    stream, _ = open_in_root(root, path, limit)
    with stream:
        return stream.read()


def test_plain_path(tree, resolver) -> None:
    root, _ = tree
    assert read(root, "/etc/secret") == b"inside\n"
    assert read(root, "etc/./secret") == b"inside\n"


def test_absolute_symlink_resolves_inside_the_root(tree, resolver) -> None:
    root, outside = tree
    (root / "tmp/perf-7.map").symlink_to(outside / "etc/secret")
    with pytest.raises(FileNotFoundError):
        read(root, "/tmp/perf-7.map")  # outside/etc/secret does not exist inside root
    (root / "tmp/link").symlink_to("/etc/secret")
    assert read(root, "/tmp/link") == b"inside\n"


def test_dot_dot_stops_at_the_root(tree, resolver) -> None:
    root, outside = tree
    depth = len(root.parts)
    climb = "/".join([".."] * (depth + 3))
    assert read(root, f"/tmp/{climb}/etc/secret") == b"inside\n"
    (root / "tmp/up").symlink_to(f"{climb}/host/etc/secret")
    with pytest.raises(FileNotFoundError):
        read(root, "/tmp/up")
    (root / "tmp/up2").symlink_to("../etc/secret")
    assert read(root, "/tmp/up2") == b"inside\n"


def test_symlinked_directories_resolve_inside_the_root(tree, resolver) -> None:
    root, outside = tree
    (root / "tmp/etc").symlink_to(outside / "etc")  # absolute, to the host's directory
    with pytest.raises(FileNotFoundError):
        read(root, "/tmp/etc/secret")
    (root / "lib").symlink_to("/etc")
    assert read(root, "/lib/secret") == b"inside\n"


def test_symlink_loop_is_refused(tree, resolver) -> None:
    root, _ = tree
    (root / "tmp/a").symlink_to("/tmp/b")
    (root / "tmp/b").symlink_to("/tmp/a")
    with pytest.raises(OSError) as raised:
        read(root, "/tmp/a")
    assert raised.value.errno == errno.ELOOP


def test_only_regular_files_are_opened(tree, resolver) -> None:
    root, _ = tree
    os.mkfifo(root / "tmp/fifo")
    os.mknod(root / "tmp/null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    for path in ("/tmp/fifo", "/tmp/null", "/tmp", "/"):
        with pytest.raises(OSError) as raised:
            read(root, path)  # a FIFO would block: the test would hang, not fail
        assert raised.value.errno == errno.EINVAL, path
        assert "not a regular file" in str(raised.value)


def test_files_over_the_limit_are_refused(tree, resolver) -> None:
    root, _ = tree
    (root / "big").write_bytes(b"x" * 5000)
    assert len(read(root, "/big", 5000)) == 5000
    with pytest.raises(OSError) as raised:
        read(root, "/big", 4999)
    assert raised.value.errno == errno.EFBIG


def test_missing_components(tree, resolver) -> None:
    root, _ = tree
    with pytest.raises(FileNotFoundError):
        read(root, "/no/such/file")
    with pytest.raises(NotADirectoryError):
        read(root, "/etc/secret/below")


def test_a_process_root_is_a_root(tree, resolver) -> None:
    """Through /proc/PID/root of a chrooted process: its own files, never the host's."""
    root, outside = tree
    (root / "tmp/perf-1.map").symlink_to(outside / "etc/secret")
    ready = threading.Event()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        try:
            os.chroot(root)
            while True:
                signal.pause()
        finally:
            os._exit(0)
    try:
        proc_root = Path(f"/proc/{child}/root")
        for _ in range(500):
            if os.readlink(proc_root) == str(root):
                ready.set()
                break
            threading.Event().wait(0.01)
        assert ready.is_set(), "the child did not chroot"
        assert read(proc_root, "/etc/secret") == b"inside\n"
        with pytest.raises(FileNotFoundError):
            read(proc_root, "/tmp/perf-1.map")
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)


def test_openat2_is_used_where_the_kernel_has_it(tree) -> None:
    root, _ = tree
    rooted_open.use_openat2(None)
    try:
        read(root, "/etc/secret")
        assert rooted_open._openat2_works is True  # Linux 5.6+ (this machine runs 6.x)
    finally:
        rooted_open.use_openat2(None)
