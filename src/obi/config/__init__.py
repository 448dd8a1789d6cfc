"""obi configuration: one validated model built from defaults, a YAML file and the environment."""

from obi.config.loader import CONFIG_PATH_ENV, load_config
from obi.config.model import (
    DEFAULT_EXCLUDE_INSTRUMENT,
    AttributesConfig,
    Config,
    ConfigError,
    DiscoveryConfig,
    EbpfConfig,
    HistogramBuckets,
    InternalMetricsConfig,
    KubernetesConfig,
    MetricsExportConfig,
    PrometheusExportConfig,
    RoutesConfig,
    SamplerConfig,
    Selector,
    TracesExportConfig,
)
from obi.config.patterns import Glob, PathRegex
from obi.config.values import PortRanges, ports_contain

__all__ = [
    "CONFIG_PATH_ENV",
    "DEFAULT_EXCLUDE_INSTRUMENT",
    "AttributesConfig",
    "Config",
    "ConfigError",
    "DiscoveryConfig",
    "EbpfConfig",
    "Glob",
    "HistogramBuckets",
    "InternalMetricsConfig",
    "KubernetesConfig",
    "MetricsExportConfig",
    "PathRegex",
    "PortRanges",
    "PrometheusExportConfig",
    "RoutesConfig",
    "SamplerConfig",
    "Selector",
    "TracesExportConfig",
    "load_config",
    "ports_contain",
]
