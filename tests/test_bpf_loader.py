"""The BPF loader: compiler errors are shown on failure, and nothing is left in /tmp."""

import pytest

from rover.bpf.headers import HeaderSearch
from rover.bpf.loader import BPFLoadError
from rover.bpf.program import ProgramSpec, load_program

pytestmark = pytest.mark.bpf


def test_a_compile_error_shows_the_compiler_lines_and_leaves_no_log(tmp_path, monkeypatch):
    programs, temp = tmp_path / "bpf", tmp_path / "tmp"
    programs.mkdir()
    temp.mkdir()
    (programs / "broken.c").write_text("int broken(void *ctx) { return undeclared_name; }\n")
    monkeypatch.setenv("ROVER_BPF_DIR", str(programs))
    monkeypatch.setenv("TMPDIR", str(temp))  # the compile helper's temporary files
    with pytest.raises(BPFLoadError) as err:
        load_program(ProgramSpec("broken", {}, "broken", "perf_event"), HeaderSearch().find())
    assert "could not load broken.c" in str(err.value)
    assert "use of undeclared identifier 'undeclared_name'" in str(err.value)
    assert list(temp.iterdir()) == []
