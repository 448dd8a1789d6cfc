"""The drain's reading of the kernel counters: lost process events make discovery look again."""

from __future__ import annotations

from typing import cast

from obi.ebpf.capture import Capture
from obi.ebpf.drain import CaptureDrain, DrainSettings


class Counters:
    def __init__(self) -> None:
        self.values = {"events_lost": 0, "process_events_lost": 0}

    def counters(self) -> dict[str, int]:
        return dict(self.values)


def test_lost_process_events_ask_discovery_for_a_full_scan_once_per_loss() -> None:
    kernel = Counters()
    drain = CaptureDrain(cast(Capture, kernel), DrainSettings())
    rescans: list[int] = []
    drain.on_process_events_lost = lambda: rescans.append(1)
    drain.check_counters()
    assert rescans == []
    kernel.values["process_events_lost"] = 3
    drain.check_counters()
    drain.check_counters()
    assert rescans == [1]
    kernel.values["process_events_lost"] = 4
    drain.check_counters()
    assert rescans == [1, 1]
