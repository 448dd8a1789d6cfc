"""A process placed in real kubepods-shaped cgroups (v1 only, v2 only, both) is
found in its container by the /proc/PID/cgroup path obi reads."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest

from obi.kube.cgroup import container_id, pod_uid_from_cgroup
from tests.support import PodCgroup


@pytest.mark.parametrize("versions", [("v1",), ("v2",), ("v2", "v1")])
def test_container_of_a_process_in_pod_cgroups(versions: tuple[str, ...]) -> None:
    uid, cid = str(uuid.uuid4()), uuid.uuid4().hex * 2
    cgroup = PodCgroup(uid, cid, qos="burstable", versions=versions).create()
    proc = subprocess.Popen(cgroup.wrap(["sleep", "30"]))
    try:
        cgroup_file = Path(f"/proc/{proc.pid}/cgroup")
        for _ in range(200):  # until sh has moved itself in (at most 2 s)
            text = cgroup_file.read_text()
            if cid in text:
                break
            time.sleep(0.01)
        assert container_id(proc.pid) == cid
        assert pod_uid_from_cgroup(text) == uid
    finally:
        proc.kill()
        proc.wait()
        cgroup.remove()
    assert all(not leaf.exists() for leaf in cgroup.leaves)


def test_host_process_has_no_container() -> None:
    assert container_id(1) is None
