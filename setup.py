"""Build hook: put the BPF sources and the shipped configuration inside the wheel.

They live at the top of the repository (bpf/, configs/); ``rover._data.data_dir``
finds the copies this step makes in ``rover/_data/`` of an installed package.
Everything else about the build is in pyproject.toml.
"""

from __future__ import annotations

import runpy
import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
# Read from the module by path: the package itself is not importable at build time.
_DATA_MODULE = ROOT / "rover" / "_data" / "__init__.py"
DATA_FILES: dict[str, tuple[str, ...]] = runpy.run_path(str(_DATA_MODULE))["DATA_FILES"]


class BuildWithData(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:  # an editable install reads the source tree directly
            return
        for name, patterns in DATA_FILES.items():
            target = Path(self.build_lib) / "rover" / "_data" / name
            target.mkdir(parents=True, exist_ok=True)
            files = [f for pattern in patterns for f in sorted((ROOT / name).glob(pattern))]
            if not files:
                raise SystemExit(f"setup.py: no {patterns} in {ROOT / name}")
            for source in files:
                shutil.copy2(source, target / source.name)


setup(cmdclass={"build_py": BuildWithData})
