"""``load_config``: which file, then read, resolve, type and check it."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from rover._data import data_dir
from rover.config.build import build_agent_config, build_cache_config
from rover.config.model import AgentConfig, CacheConfig
from rover.config.reader import Section
from rover.config.yaml_file import read_tree

# The shipped file: <repo>/configs/rover_configs.yaml, or its copy in an installed
# package (see rover._data).
SHIPPED_CONFIG = data_dir("configs") / "rover_configs.yaml"
CONFIG_ENV = "ROVER_CONFIG"


def default_config_path(env: Mapping[str, str] | None = None) -> Path:
    """``$ROVER_CONFIG`` when set, else the shipped ``configs/rover_configs.yaml``."""
    env = os.environ if env is None else env
    return Path(env[CONFIG_ENV]) if env.get(CONFIG_ENV) else SHIPPED_CONFIG


def load_config(path: str | None = None, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Read ``path`` (default: :func:`default_config_path`) with ``env`` (default: os.environ).

    Raises ConfigError naming the file, or the key and the value, on any problem.
    """
    env = os.environ if env is None else env
    file = Path(path) if path is not None else default_config_path(env)
    return build_agent_config(read_tree(file), env, source=str(file))


def load_cache_config(env: Mapping[str, str] | None = None) -> CacheConfig:
    """The ``cache`` section alone, of the file :func:`load_config` would read without a
    path: what ``rover profile`` takes from the agent's configuration (its byte budgets,
    with the same ``ROVER_CACHE_*`` variables). Raises ConfigError as load_config does."""
    env = os.environ if env is None else env
    file = default_config_path(env)
    tree = read_tree(file)
    for key, value in tree.items():
        if key.lower() == "cache":
            return build_cache_config(Section.root({"cache": value}, env).section("cache"))
    return CacheConfig()
