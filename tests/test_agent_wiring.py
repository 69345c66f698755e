"""The agent hands each part its section of the configuration as loaded: one model, no copy."""

from __future__ import annotations

from rover.agent import Agent
from rover.config import load_config


def test_each_part_takes_its_configuration_section_as_is() -> None:
    config = load_config(None, {"ROVER_BACKEND_ADDR": "oap.example:11800"})
    agent = Agent(config, finders=[])
    try:
        assert agent.client.config is config.core.backend
        assert agent.continuous is not None
        assert agent.continuous.config is config.profiling.continuous
    finally:
        agent.client.close()
