"""
gatewaykit's configuration: a YAML file loaded into frozen model objects
(L{gatewaykit.config.model}), with every mistake reported as
C{PATH:LINE:COL: message}.
"""

from gatewaykit.config.errors import ConfigError, ConfigProblem
from gatewaykit.config.loader import load_config, parse_config

__all__ = ["ConfigError", "ConfigProblem", "load_config", "parse_config"]
