"""Where a process's TLS library is, and where its SSL_read/SSL_write are (spec 8.14).

OpenSSL is found in ``/proc/PID/maps``: a shared ``libssl.so.<N>`` mapped by the
process, or the process's own executable when it defines ``SSL_read``/``SSL_write``
(statically linked). The functions' file offsets come from the ELF symbol tables
(``.dynsym``/``.symtab``, through the PT_LOAD segment holding each address); the
version from the ``OpenSSL x.y.z`` string in the read-only data of libcrypto (the
library's own for a static binary), else from libssl's SONAME. Files are opened
inside the process's root (``/proc/PID/root``), so processes in containers resolve.

Nothing here reads memory of the process or depends on the layout of OpenSSL's
structs: the kernel side ties a call to its connection by the data calls the library
makes inside it.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
from dataclasses import dataclass, field

from rover.hostfs import HostFS, ProcessGone
from rover.symbols.elf_file import ElfImage, ElfLoadError
from rover.symbols.elf_table import defined_functions
from rover.symbols.maps import MappingKind, parse_maps

log = logging.getLogger(__name__)

# symbol -> (entry function of bpf/network.c); every one also gets the return probe
PROBED: dict[str, str] = {
    "SSL_write": "ssl_write_enter",
    "SSL_read": "ssl_read_enter",
    "SSL_write_ex": "ssl_write_ex_enter",
    "SSL_read_ex": "ssl_read_ex_enter",
}
RETURN_FUNCTION = "ssl_exit_probe"
REQUIRED = ("SSL_write", "SSL_read")  # the _ex variants exist from OpenSSL 1.1.1 on
SUPPORTED_VERSIONS = ("1.1", "3.0")  # major.minor (spec 8.14: Rover rejects 3.1+)

_LIBSSL = re.compile(r"libssl\.so(?:\.\d+)*")
_LIBCRYPTO = re.compile(r"libcrypto\.so(?:\.\d+)*")
_VERSION = re.compile(rb"OpenSSL (\d+\.\d+\.\d+[a-z]{0,2})[ \0]")
_MAX_RODATA = 64 << 20
_MAX_ELF = 1 << 30


class TlsLookupError(Exception):
    """A library's symbols or version could not be read."""


@dataclass(frozen=True)
class TlsLibrary:
    """One OpenSSL a process uses: how it maps it, how we open it, what it defines."""

    path: str  # as the process maps it
    open_path: str  # the same file from here (through /proc/PID/root)
    static: bool  # OpenSSL linked into the executable
    version: str  # "3.0.19"; "3" or "1.1" from a SONAME; "" unknown
    offsets: dict[str, int] = field(default_factory=dict)  # symbol -> file offset

    @property
    def supported(self) -> bool:
        if self.version in ("3", "1.1"):  # SONAME only: the ABI the method needs
            return True
        return any(self.version.startswith(v + ".") for v in SUPPORTED_VERSIONS)


def find_tls_libraries(pid: int, hostfs: HostFS) -> list[TlsLibrary]:
    """Every OpenSSL ``pid`` has mapped now (empty: none). Raises ProcessGone, and
    TlsLookupError when a library found cannot be read."""
    try:
        maps = parse_maps(hostfs.read_text(pid, "maps"))
    except OSError as exc:
        raise TlsLookupError(f"cannot read /proc/{pid}/maps: {exc}") from exc
    files = {m.path for m in maps if m.kind is MappingKind.FILE and not m.deleted}
    crypto = sorted(p for p in files if _LIBCRYPTO.fullmatch(posixpath.basename(p)))
    found = []
    for path in sorted(p for p in files if _LIBSSL.fullmatch(posixpath.basename(p))):
        offsets, _ = _functions(pid, path, hostfs, rodata=False)
        if not all(name in offsets for name in REQUIRED):
            continue
        version = _crypto_version(pid, path, crypto, hostfs) or _soname_version(path)
        found.append(TlsLibrary(path, _open_path(pid, path, hostfs), False, version, offsets))
    exe = _executable(pid, hostfs)
    if exe and exe in files and not found:
        offsets, version = _functions(pid, exe, hostfs, rodata=True)
        if all(name in offsets for name in REQUIRED):
            found.append(TlsLibrary(exe, _open_path(pid, exe, hostfs), True, version, offsets))
    return found


def _open_path(pid: int, path: str, hostfs: HostFS) -> str:
    return str(hostfs.target_path(pid, path))


def _executable(pid: int, hostfs: HostFS) -> str | None:
    try:
        link = os.readlink(hostfs.proc_path(pid, "exe"))
    except OSError:
        return None
    return link.removesuffix(" (deleted)")


# (dev, inode, size, mtime) -> (offsets, version): many processes share one library
_cache: dict[tuple[int, int, int, int, bool], tuple[dict[str, int], str]] = {}
_CACHE_MAX = 256


def _functions(pid: int, path: str, hostfs: HostFS, rodata: bool) -> tuple[dict[str, int], str]:
    """File offsets of the probed functions ``path`` defines, and (``rodata``) the
    OpenSSL version its read-only data names."""
    try:
        stream, stat = hostfs.open_target_file(pid, path, _MAX_ELF)
    except ProcessGone:
        raise
    except OSError as exc:
        raise TlsLookupError(f"cannot open {path}: {exc}") from exc
    with stream:
        key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, rodata)
        known = _cache.get(key)
        if known is not None:
            return known
        try:
            image = ElfImage(stream)
            values = defined_functions(image, list(PROBED))
            offsets = {}
            for name, vaddr in values.items():
                offset = image.file_offset(vaddr)
                if offset is not None:
                    offsets[name] = offset
            version = _rodata_version(image) if rodata else ""
        except ElfLoadError as exc:
            raise TlsLookupError(f"{path}: {exc}") from exc
    if len(_cache) >= _CACHE_MAX:
        _cache.clear()
    _cache[key] = (offsets, version)
    return offsets, version


def _rodata_version(image: ElfImage) -> str:
    section = image.section(".rodata")
    if section is None:
        return ""
    match = _VERSION.search(image.section_data(section, _MAX_RODATA))
    return match.group(1).decode() if match else ""


def _crypto_version(pid: int, libssl: str, crypto: list[str], hostfs: HostFS) -> str:
    """The version libcrypto names: the one beside ``libssl`` with its SONAME number
    first, else any the process maps."""
    suffix = posixpath.basename(libssl).removeprefix("libssl")
    beside = posixpath.join(posixpath.dirname(libssl), "libcrypto" + suffix)
    for path in sorted(crypto, key=lambda p: p != beside):
        try:
            stream, _ = hostfs.open_target_file(pid, path, _MAX_ELF)
        except OSError:
            continue
        with stream:
            try:
                version = _rodata_version(ElfImage(stream))
            except ElfLoadError:
                continue
        if version:
            return version
    return ""


def _soname_version(path: str) -> str:
    """ "3" for libssl.so.3, "1.1" for libssl.so.1.1, "" for an unversioned name."""
    return posixpath.basename(path).removeprefix("libssl.so").lstrip(".")
