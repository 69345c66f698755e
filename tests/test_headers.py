"""Kernel header discovery: order, host-root mapping, Debian split trees, errors."""

import os
from pathlib import Path

import pytest

from rover.bpf.headers import (
    MISMATCH_IS_FINE,
    REQUIRED_BUILD_FILES,
    REQUIRED_SOURCE_FILES,
    HeaderSearch,
    KernelHeadersNotFound,
)
from rover.hostfs import HostFS

RELEASE = "6.1.0-13-amd64"


def make_tree(root: Path, name: str, *, source: bool = True, generated: bool = True) -> Path:
    """A header tree with (only) the files the search requires."""
    tree = root / name
    files = [
        *(REQUIRED_SOURCE_FILES if source else ()),
        *(REQUIRED_BUILD_FILES if generated else ()),
    ]
    for file in files:
        (tree / file).parent.mkdir(parents=True, exist_ok=True)
        (tree / file).write_text("")
    if generated:
        (tree / "include" / "config").mkdir(parents=True, exist_ok=True)
        (tree / "include" / "config" / "kernel.release").write_text(name + "\n")
    return tree


def debian_pair(root: Path, version: str) -> tuple[Path, Path]:
    arch = make_tree(root, f"linux-headers-{version}-amd64", source=False)
    common = make_tree(root, f"linux-headers-{version}-common", generated=False)
    return arch, common


def test_host_headers_through_host_root_with_absolute_symlinks(tmp_path):
    host = tmp_path / "host"
    arch, common = debian_pair(host / "usr" / "src", "6.1.0-13")
    moddir = host / "lib" / "modules" / RELEASE
    moddir.mkdir(parents=True)
    # Symlinks as the host has them: absolute host paths, only valid inside the host root.
    os.symlink(f"/usr/src/{arch.name}", moddir / "build")
    os.symlink(f"/usr/src/{common.name}", moddir / "source")
    found = HeaderSearch(hostfs=HostFS(host), release=RELEASE).find()
    assert (found.origin, found.build, found.source) == ("host", arch, common)
    assert f"-I{arch}/include" in found.bcc_cflags()
    assert found.bcc_environment() == {"BCC_KERNEL_SOURCE": str(common)}
    assert "host headers" in found.describe()


def test_host_wins_over_configured_and_shipped(tmp_path):
    host = tmp_path / "host"
    tree = make_tree(host / "lib" / "modules" / RELEASE, "build")
    configured = make_tree(tmp_path, "configured")
    found = HeaderSearch(
        hostfs=HostFS(host),
        configured_dir=str(configured),
        shipped_dir=str(tmp_path),
        release=RELEASE,
    ).find()
    assert found.origin == "host" and found.build == tree and found.source == tree


def test_configured_dir_used_when_host_has_none(tmp_path):
    configured = make_tree(tmp_path, "my-headers")
    search = HeaderSearch(
        hostfs=HostFS(tmp_path / "empty-host"),
        configured_dir=str(configured),
        shipped_dir=str(tmp_path / "none"),
        release=RELEASE,
    )
    found = search.find()
    assert found.origin == "configured" and found.build == configured
    assert any("/lib/modules" in t for t in search.tried)


def test_shipped_picks_closest_version_and_pairs_debian_trees(tmp_path):
    shipped = tmp_path / "shipped"
    debian_pair(shipped, "5.10.0-26")
    arch61, common61 = debian_pair(shipped, "6.1.0-13")
    debian_pair(shipped, "6.12.41+deb13")
    found = HeaderSearch(
        hostfs=HostFS(tmp_path / "empty"), shipped_dir=str(shipped), release="6.1.0-20-amd64"
    ).find()
    assert (found.origin, found.build, found.source) == ("shipped", arch61, common61)
    assert found.release == arch61.name


def test_incomplete_tree_is_skipped_and_reported(tmp_path):
    broken = make_tree(tmp_path, "broken", generated=False)
    search = HeaderSearch(
        hostfs=HostFS(tmp_path / "empty"),
        configured_dir=str(broken),
        shipped_dir=str(tmp_path / "none"),
        release=RELEASE,
    )
    with pytest.raises(KernelHeadersNotFound) as err:
        search.find()
    message = str(err.value)
    assert "autoconf.h" in message  # says what was missing
    assert f"linux-headers-{RELEASE}" in message  # and what to install
    assert "shipped" in message


@pytest.mark.parametrize("missing", REQUIRED_SOURCE_FILES)
def test_tree_without_a_header_the_programs_include_is_refused(tmp_path, missing):
    """bcc crashes (SIGSEGV) compiling against a tree missing one of these, instead of
    reporting the error: such a tree is never handed to it."""
    tree = make_tree(tmp_path, "linux-headers-partial")
    (tree / missing).unlink()
    search = HeaderSearch(
        hostfs=HostFS(tmp_path / "empty"),
        configured_dir=str(tree),
        shipped_dir=str(tmp_path / "none"),
        release=RELEASE,
    )
    with pytest.raises(KernelHeadersNotFound) as err:
        search.find()
    assert str(tree / missing) in str(err.value)


@pytest.mark.bpf
def test_configured_headers_really_compile(tmp_path):
    """The fallback path works for real: no host headers, a configured Debian split tree."""
    from rover.bpf.engine import ProfilerEngine
    from rover.profile import ProfileType

    real = HeaderSearch().find()  # what set-up installed for this kernel
    search = HeaderSearch(
        hostfs=HostFS(tmp_path / "empty-host"),
        configured_dir=str(real.build.parent),  # e.g. /usr/src holding -amd64 and -common
        shipped_dir=str(tmp_path / "none"),
    )
    headers = search.find()
    assert headers.origin == "configured"
    engine = ProfilerEngine(ProfileType.OFF_CPU, headers)
    engine.close()


def release_tree(root: Path, release: str) -> Path:
    """A header tree saying it is for kernel ``release`` (include/config/kernel.release)."""
    tree = make_tree(root, f"linux-headers-{release}")
    (tree / "include" / "config" / "kernel.release").write_text(release + "\n")
    return tree


def test_headers_of_the_running_kernel_say_they_match(tmp_path):
    tree = release_tree(tmp_path, RELEASE)
    found = HeaderSearch(
        hostfs=HostFS(tmp_path / "empty"), configured_dir=str(tree), release=RELEASE
    ).find()
    assert found.matches_running is True
    expected = f"configured headers {RELEASE} at {tree}, matching the running kernel"
    assert found.describe() == expected
    assert found.describe_for_user() == expected  # nothing to excuse


def test_headers_of_another_kernel_say_so_and_why_they_still_work(tmp_path):
    tree = release_tree(tmp_path / "shipped", "6.12.118+deb12-amd64")
    found = HeaderSearch(
        hostfs=HostFS(tmp_path / "empty"), shipped_dir=str(tree.parent), release="6.18.44"
    ).find()
    assert found.matches_running is False
    mismatch = (
        f"shipped headers 6.12.118+deb12-amd64 at {tree}, "
        "which do not match the running kernel 6.18.44"
    )
    assert found.describe() == mismatch
    assert found.describe_for_user() == f"{mismatch}; {MISMATCH_IS_FINE}"


def test_headers_of_unknown_version_say_so(tmp_path):
    tree = make_tree(tmp_path, "mystery")
    (tree / "include" / "config" / "kernel.release").unlink()
    found = HeaderSearch(
        hostfs=HostFS(tmp_path / "empty"), configured_dir=str(tree), release=RELEASE
    ).find()
    assert found.matches_running is None
    assert found.describe() == (
        f"configured headers of unknown version at {tree} (running kernel {RELEASE})"
    )
