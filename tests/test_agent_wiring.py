"""The agent hands each part its section of the configuration as loaded: one model, no copy."""

from __future__ import annotations

from rover.agent import Agent
from rover.config import load_config
from rover.symbols import demangle
from rover.symbols.demangle import DEFAULT_DEMANGLED_NAME_BYTES


def test_each_part_takes_its_configuration_section_as_is() -> None:
    config = load_config(None, {"ROVER_BACKEND_ADDR": "oap.example:11800"})
    agent = Agent(config, finders=[])
    try:
        assert agent.client.config is config.core.backend
        assert agent.continuous is not None
        assert agent.continuous.config is config.profiling.continuous
    finally:
        agent.client.close()


def test_the_cache_settings_reach_the_caches() -> None:
    env = {
        "ROVER_CACHE_SYMBOL_TABLE_BYTES": str(3 << 20),
        "ROVER_CACHE_CFI_TABLE_BYTES": str(5 << 20),
        "ROVER_CACHE_PERF_MAP_BYTES": str(7 << 20),
        "ROVER_CACHE_DEMANGLED_NAME_BYTES": str(1 << 20),
        "ROVER_PROFILING_UNWIND_TABLE_BYTES": str(9 << 20),
    }
    agent = Agent(load_config(None, env), finders=[])
    try:
        budgets = {c.name: c.budget_bytes for c in agent.caches()}
        assert budgets["symbol_tables"] == 3 << 20
        assert budgets["cfi_tables"] == 5 << 20
        assert budgets["perf_maps"] == 7 << 20
        assert budgets["demangled_names"] == 1 << 20
        assert budgets["kernel_unwind_rows_on_cpu"] == budgets["kernel_unwind_rows_off_cpu"]
        assert budgets["kernel_unwind_rows_on_cpu"] == 9 << 20
    finally:
        agent.client.close()
        demangle.set_cache_bytes(DEFAULT_DEMANGLED_NAME_BYTES)
