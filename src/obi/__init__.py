"""obi: OpenTelemetry eBPF Instrumentation in Python."""

__version__ = "0.1.0"
