"""obi: OpenTelemetry eBPF Instrumentation in Python."""

from obi.compiled import check as _check_compiled

__version__ = "0.1.0"

_check_compiled()
