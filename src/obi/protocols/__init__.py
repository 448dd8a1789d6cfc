"""Request/response protocols, one module each, behind one registry.

The kernel hands over exchanges (what one side of a TCP connection sent and
what came back) without knowing their protocol; the registry asks each
module's detector in order, and the first that recognises the bytes parses
them and makes the spans. Adding a protocol means one module here (a
detector, a pure parser, its spans) and its tests; the kernel is unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

from obi.protocols.base import Exchange, ProtocolModule

__all__ = ["ProtocolRegistry"]


class ProtocolRegistry:
    """Finds the module for an exchange: each detector in order (HTTP/1.x first: it takes
    what the kernel saw as HTTP at once)."""

    def __init__(self, modules: Sequence[ProtocolModule]) -> None:
        self.modules = tuple(modules)

    def identify(self, exchange: Exchange) -> ProtocolModule | None:
        for module in self.modules:
            if module.detect(exchange):
                return module
        return None
