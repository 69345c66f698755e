"""Run-time files that live outside the package in the source tree.

The BPF programs (``bpf/*.c``, ``bpf/*.h``) and the shipped configuration
(``configs/rover_configs.yaml``) sit at the top of the repository, where people
edit them. A built wheel carries copies inside this package (``setup.py``
copies them into ``rover/_data/`` at build time), so an installed agent finds
them here. A source checkout or an editable install reads the originals.
"""

from __future__ import annotations

from pathlib import Path

PACKAGED_DIR = Path(__file__).resolve().parent
SOURCE_TREE = PACKAGED_DIR.parents[1]  # <repo> when running from a checkout

# Directories copied into the wheel, and the files of each that are needed at run time.
DATA_FILES: dict[str, tuple[str, ...]] = {
    "bpf": ("*.c", "*.h"),
    "configs": ("rover_configs.yaml",),
}


def data_dir(name: str) -> Path:
    """``bpf`` or ``configs``: the copy inside the package, else the source tree's."""
    if name not in DATA_FILES:
        raise KeyError(f"unknown data directory {name!r}; known: {', '.join(DATA_FILES)}")
    packaged = PACKAGED_DIR / name
    if packaged.is_dir():
        return packaged
    return SOURCE_TREE / name
