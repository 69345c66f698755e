"""A Debian-built server (nginx from apt) under load: eh_frame unwinding names its code."""

from __future__ import annotations

import pytest
from nginx_server import nginx, profile_under_load

from rover.bpf.engine import EngineConfig, ProfilerEngine
from rover.bpf.headers import HeaderSearch
from rover.hostfs import HostFS
from rover.profile import ProfileType
from rover.unwind.frame_pointers import EH_FRAME, choose_unwind
from rover.unwind.modes import make_engine

pytestmark = pytest.mark.bpf


def test_nginx_samples_name_its_own_functions(tmp_path):
    headers = HeaderSearch().find()
    with nginx(tmp_path) as (server, port):
        assert choose_unwind(HostFS(), server.pid).mode == EH_FRAME
        engine = make_engine(ProfileType.ON_CPU, headers, EngineConfig(frequency=499), EH_FRAME)
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
