"""Container id and pod uid from /proc/PID/cgroup, for each runtime and cgroup version."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from obi.kube.cgroup import container_id, container_id_from_cgroup, pod_uid_from_cgroup

CID = "3f1e8c6a9b2d4f70a1c5e9d8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8"
UID = "8a0e4b2c-5d1f-4e3a-9b7c-6d5e4f3a2b1c"
UID_ = UID.replace("-", "_")

CASES = {
    "containerd cgroupfs v1": (
        f"12:memory:/kubepods/besteffort/pod{UID}/{CID}\n"
        f"11:cpu,cpuacct:/kubepods/besteffort/pod{UID}/{CID}\n"
        f"1:name=systemd:/kubepods/besteffort/pod{UID}/{CID}\n"
    ),
    "containerd cgroupfs v2": f"0::/kubepods/burstable/pod{UID}/{CID}\n",
    "containerd systemd v2": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"cri-containerd-{CID}.scope\n"
    ),
    "containerd systemd v1 guaranteed": (
        f"5:pids:/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
        f"1:name=systemd:/kubepods.slice/kubepods-pod{UID_}.slice/cri-containerd-{CID}.scope\n"
    ),
    "cri-o systemd v2": (
        f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/crio-{CID}.scope\n"
    ),
    "cri-o cgroupfs v1": f"4:memory:/kubepods/burstable/pod{UID}/crio-{CID}\n",
    "hybrid: empty v2 line, ids in v1": (
        f"0::/\n7:devices:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{UID_}.slice/"
        f"docker-{CID}.scope\n"
    ),
    "nested cgroup below the container scope": (
        f"0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice/"
        f"cri-containerd-{CID}.scope/init\n"
    ),
}


@pytest.mark.parametrize("text", CASES.values(), ids=CASES.keys())
def test_kubernetes_layouts(text: str) -> None:
    assert container_id_from_cgroup(text) == CID
    assert pod_uid_from_cgroup(text) == UID


@pytest.mark.parametrize(
    "text",
    [
        f"0::/system.slice/docker-{CID}.scope\n",
        f"12:memory:/docker/{CID}\n1:name=systemd:/docker/{CID}\n",
        f"0::/machine.slice/libpod-{CID}.scope/container\n",
    ],
    ids=["docker systemd v2", "docker cgroupfs v1", "podman"],
)
def test_plain_container_runtimes(text: str) -> None:
    assert container_id_from_cgroup(text) == CID
    assert pod_uid_from_cgroup(text) is None


def test_crio_conmon_is_not_a_container() -> None:
    pod_slice = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{UID_}.slice"
    conmon = f"0::{pod_slice}/crio-conmon-{CID}.scope\n"
    assert container_id_from_cgroup(conmon) is None
    assert pod_uid_from_cgroup(conmon) == UID


def test_runtime_id_that_is_not_hex_under_a_pod() -> None:
    assert container_id_from_cgroup(f"0::/kubepods/besteffort/pod{UID}/sandbox-runtime-id-0042\n") == (
        "sandbox-runtime-id-0042"
    )


def test_static_pod_uid_is_a_config_hash() -> None:
    pod_slice = f"/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{'c' * 32}.slice"
    text = f"0::{pod_slice}/crio-{CID}.scope\n"
    assert pod_uid_from_cgroup(text) == "c" * 32


@pytest.mark.parametrize(
    "text",
    ["0::/user.slice/user-1000.slice/session-3.scope\n", "0::/\n", "", "garbage\n:::\n", "0::/init.scope\n"],
)
def test_processes_outside_containers(text: str) -> None:
    assert container_id_from_cgroup(text) is None
    assert pod_uid_from_cgroup(text) is None


@given(st.text())
def test_arbitrary_text_never_raises(text: str) -> None:
    container_id_from_cgroup(text)
    pod_uid_from_cgroup(text)


@given(st.lists(st.sampled_from(["0", ":", "/", "kubepods", "pod", UID_, CID, "crio-", ".scope", "\n", "-"])))
def test_cgroup_like_text_never_raises(parts: list[str]) -> None:
    container_id_from_cgroup("".join(parts))
    pod_uid_from_cgroup("".join(parts))


def test_container_id_reads_proc(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "cgroup").write_text(CASES["containerd systemd v2"])
    assert container_id(42, proc_root=str(tmp_path)) == CID
    assert container_id(43, proc_root=str(tmp_path)) is None  # gone


def test_container_id_of_this_process_does_not_raise() -> None:
    result = container_id(os.getpid())
    assert result is None or isinstance(result, str)
