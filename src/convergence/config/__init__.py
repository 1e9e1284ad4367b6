"""The study's configuration: the schema Hydra composes (:mod:`.schema`), composed once
per command (:mod:`.compose`), and all of its validation, the analysis' settings included
(:mod:`.validate`)."""

from convergence.config.compose import CONF_DIR, compose_config, ready, register_configs
from convergence.config.schema import (
    AnalysisConfig,
    Config,
    ModelConfig,
    PromptConfig,
    ReportConfig,
)
from convergence.config.validate import to_config

__all__ = ["CONF_DIR", "AnalysisConfig", "Config", "ModelConfig", "PromptConfig",
           "ReportConfig", "compose_config", "ready", "register_configs", "to_config"]
