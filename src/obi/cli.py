"""Command line: `obi` runs the agent, `obi doctor` checks this host, `obi version`."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import signal
import sys

from obi import __version__

GC_YOUNG_THRESHOLD = 20_000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="obi", description="OpenTelemetry eBPF Instrumentation: traces and RED metrics, zero code.")
    parser.add_argument("--config", metavar="PATH",
                        help="YAML configuration file (default: $OTEL_EBPF_CONFIG_PATH)")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="run the agent (the default)")
    sub.add_parser("doctor", help="check what this kernel and these privileges allow")
    sub.add_parser("version", help="print the version")
    return parser


async def _run_agent(config: object) -> int:
    from obi.config import Config
    from obi.pipeline import build_agent

    assert isinstance(config, Config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = build_agent(config)
    # The per-event path allocates short-lived, acyclic objects by the million: a young
    # generation of 700 objects would run the cycle collector every few requests. What is
    # built at start is frozen out of it.
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
    await agent.run(stop)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "version":
        print(f"obi {__version__}")
        return 0
    from obi.config import ConfigError, load_config
    from obi.logs import configure_logging

    try:
        config = load_config(args.config, os.environ)
    except ConfigError as err:
        print(f"obi: {err}", file=sys.stderr)
        return 1
    configure_logging(config.log_level, config.log_format)
    if args.command == "doctor":
        from obi.doctor import run_doctor

        return run_doctor(sys.stdout)
    from obi.preflight import PreflightError, run_preflight

    preflight = run_preflight()
    if config.enforce_sys_caps:
        try:
            preflight.enforce()
        except PreflightError as err:
            print(f"obi: {err}", file=sys.stderr)
            return 1
    try:
        return asyncio.run(_run_agent(config))
    except OSError as err:
        # Kernel and system refusals: one line, the likely cause, and where to look next.
        cause = preflight.explain(err)
        because = f": {cause}" if cause else ""
        print(f"obi: {err}{because} (`obi doctor` shows what this host allows)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
