"""A Debian-built server (nginx from apt) under load: eh_frame unwinding names its code."""

from __future__ import annotations

import threading

import pytest
from nginx_server import load, nginx

from rover.bpf.engine import EngineConfig, ProfilerEngine
from rover.bpf.headers import HeaderSearch
from rover.hostfs import HostFS
from rover.profile import ProfileType
from rover.symbols import Symbolizer
from rover.unwind.engine import DwarfProfilerEngine
from rover.unwind.frame_pointers import EH_FRAME, choose_unwind

pytestmark = pytest.mark.bpf


def profile_under_load(engine, pid: int, port: int, seconds: float = 3.0):
    """(samples, samples with a named nginx frame) while wrk loads the server."""
    symbolizer = Symbolizer()
    symbolizer.prepare(pid)
    engine.add_pid(pid)
    loader = threading.Thread(target=load, args=(port, seconds))
    loader.start()
    loader.join()
    engine.remove_pid(pid)
    result = engine.drain()
    total = named = 0
    for stack in result.stacks:
        frames = symbolizer.user_frames(pid, [a for a in stack.user if a < 1 << 63])
        total += stack.values[0]
        if any(f.module == "nginx" and f.symbolized for f in frames):
            named += stack.values[0]
    return total, named, result


def test_nginx_samples_name_its_own_functions(tmp_path):
    headers = HeaderSearch().find()
    with nginx(tmp_path) as (server, port):
        assert choose_unwind(HostFS(), server.pid).mode == EH_FRAME
        engine = DwarfProfilerEngine(ProfileType.ON_CPU, headers, EngineConfig(frequency=499))
        try:
            total, named, result = profile_under_load(engine, server.pid, port)
        finally:
            engine.close()
        assert total > 300
        assert named / total >= 0.9, (named, total, result.counters)
        fp = ProfilerEngine(ProfileType.ON_CPU, headers, EngineConfig(frequency=499))
        try:
            fp_total, fp_named, _ = profile_under_load(fp, server.pid, port, 2.0)
        finally:
            fp.close()
    # Frame pointers stop in libc and the kernel: most samples lose nginx entirely.
    assert fp_named / fp_total < named / total
