"""Kernels of the test matrix: Debian kernel packages fetched once into build/kernels/, each
booted in a virtme-ng guest under QEMU (software emulation: KVM fails on these machines)
that shares the host's file system and runs one command in this repository.

    python3 -m tests.matrix.vm fetch [KERNEL...]        fetch (or reuse) the kernels
    python3 -m tests.matrix.vm run KERNEL -- COMMAND...  boot KERNEL, run COMMAND in the repo

tools/kernels and tools/vm-run are these two commands. In the guest, OBI_VM_KERNEL names the
kernel (tests/matrix is not collected there). Standard library only: fetching runs before the
.venv exists. The guest needs qemu-system-x86, busybox-static and kmod (Debian)
and virtme-ng (PyPI, in the .venv).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parents[2]
KERNELS = ROOT / "build" / "kernels"
RUNS = ROOT / "build" / "vm"
VENV_BIN = ROOT / ".venv" / "bin"
MIRROR = os.environ.get("OBI_DEBIAN_MIRROR", "http://deb.debian.org")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
# a kernel log line on the console (shown only with --kernel-log or when the guest fails)
PRINTK = re.compile(r"^\[\s*\d+\.\d+\] ")
GUEST_UP = "obi-vm: guest up"
KEEP_RUNS = 30  # run directories kept in build/vm/ (the oldest go first)


@dataclass(frozen=True)
class DebianKernel:
    """The newest `linux-image-amd64` of a Debian release."""

    name: str
    suite: str
    security: bool = True  # the release has a -security suite

    def sources(self) -> str:
        lines = [f"deb [signed-by={KEYRING}] {MIRROR}/debian {self.suite} main"]
        if self.security:
            lines.append(f"deb [signed-by={KEYRING}] {MIRROR}/debian-security {self.suite}-security main")
        return "\n".join(lines) + "\n"


KERNELS_KNOWN: dict[str, DebianKernel] = {
    "6.1": DebianKernel("6.1", "bookworm"),  # Debian 12
    "5.10": DebianKernel("5.10", "bullseye"),  # Debian 11
    # Debian unstable's, whatever version it is today (7.2 in December 2026): the newest verifier
    "sid": DebianKernel("sid", "sid", security=False),
}
MATRIX = ("6.1", "5.10", "sid")  # what tests/matrix runs on


class VmError(Exception):
    """A kernel cannot be fetched or a guest cannot be booted (not a failure of the command)."""


@dataclass(frozen=True)
class FetchedKernel:
    name: str
    package: str  # e.g. linux-image-6.1.0-57-amd64
    version: str  # the package's version, e.g. 6.1.192-3
    release: str  # uname -r, e.g. 6.1.0-57-amd64
    directory: Path  # the package unpacked: boot/vmlinuz-RELEASE, lib/modules/RELEASE

    @property
    def image(self) -> Path:
        """boot/vmlinuz-RELEASE, or in Debian 14 on usr/lib/modules/RELEASE/vmlinuz."""
        candidates = [self.directory / "boot" / f"vmlinuz-{self.release}",
                      self.directory / "usr" / "lib" / "modules" / self.release / "vmlinuz"]
        return next((c for c in candidates if c.is_file()), candidates[0])


def _check(argv: Sequence[str], cwd: Path | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, cwd=cwd)
    if done.returncode != 0:
        raise VmError(f"{shlex.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}")
    return done.stdout


def fetched(name: str) -> FetchedKernel | None:
    """The kernel `name` as already fetched, or None."""
    meta = KERNELS / name / "kernel.json"
    if not meta.is_file():
        return None
    info = json.loads(meta.read_text())
    kernel = FetchedKernel(name, info["package"], info["version"], info["release"], KERNELS / name)
    return kernel if kernel.image.is_file() else None


def fetch(name: str, refresh: bool = False) -> FetchedKernel:
    """The kernel `name` (KERNELS_KNOWN), downloaded with apt (its own lists, the host's apt state
    untouched) and unpacked with dpkg -x into build/kernels/NAME/ unless already there;
    `refresh` fetches the newest package again."""
    if name not in KERNELS_KNOWN:
        raise VmError(f"unknown kernel {name!r} (known: {', '.join(KERNELS_KNOWN)})")
    if not refresh and (kernel := fetched(name)) is not None:
        return kernel
    KERNELS.mkdir(parents=True, exist_ok=True)
    with open(KERNELS / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one fetch at a time; a concurrent one may have done it
        if not refresh and (kernel := fetched(name)) is not None:
            return kernel
        return _download(name)


def _download(name: str) -> FetchedKernel:
    for tool in ("apt-get", "apt-cache", "dpkg", "depmod"):
        if shutil.which(tool, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin") is None:
            raise VmError(f"fetching kernel {name} needs {tool} (Debian packages apt, dpkg, kmod)")
    spec = KERNELS_KNOWN[name]
    apt_dir = KERNELS / ".apt" / spec.suite
    for sub in ("lists/partial", "cache/archives/partial", "debs"):
        (apt_dir / sub).mkdir(parents=True, exist_ok=True)
    (apt_dir / "sources.list").write_text(spec.sources())
    options = ["-o", f"Dir::Etc::sourcelist={apt_dir / 'sources.list'}", "-o", "Dir::Etc::sourceparts=-",
               "-o", f"Dir::State::Lists={apt_dir / 'lists'}", "-o", f"Dir::Cache={apt_dir / 'cache'}",
               "-o", "APT::Sandbox::User=root", "-q"]
    _check(["apt-get", *options, "update"])
    depends = _check(["apt-cache", *options, "depends", "linux-image-amd64"])
    found = re.search(r"Depends: (linux-image-(\S+))", depends)
    if found is None:
        raise VmError(f"no linux-image package behind linux-image-amd64 in {spec.suite}:\n{depends}")
    package, release = found.group(1), found.group(2)
    version = _check(["apt-cache", *options, "show", "--no-all-versions", package])
    version = re.search(r"^Version: (\S+)", version, re.M).group(1)  # type: ignore[union-attr]
    # Debian 14 on splits the image package: the kernel and its modules are dependencies of it
    parts = re.findall(rf"Depends: (linux-(?:binary|modules)-{re.escape(release)})\s", depends
                       + _check(["apt-cache", *options, "depends", package]))
    debs = apt_dir / "debs"
    for old in debs.glob("*.deb"):
        old.unlink()
    _check(["apt-get", *options, "download", package, *sorted(set(parts))], cwd=debs)
    unpacked = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=KERNELS))
    try:
        for deb in debs.glob("*.deb"):
            _check(["dpkg", "-x", str(deb), str(unpacked)])
        # the package's modules.dep comes from its postinst; virtme-ng needs it to find modules
        depmod = shutil.which("depmod", path="/usr/sbin:/sbin:/usr/bin:/bin") or "depmod"
        # merged /usr (Debian 13 on) keeps modules in usr/lib/modules
        base = unpacked / "usr" if (unpacked / "usr" / "lib" / "modules").is_dir() else unpacked
        _check([depmod, "-a", "-b", str(base), release])
        meta = {"package": package, "version": version, "release": release, "suite": spec.suite}
        (unpacked / "kernel.json").write_text(json.dumps(meta, indent=1) + "\n")
        target = KERNELS / name
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    finally:
        if unpacked.exists():
            shutil.rmtree(unpacked)
        for deb in debs.glob("*.deb"):
            deb.unlink()
    kernel = fetched(name)
    if kernel is None:
        raise VmError(f"{package} unpacked into {KERNELS / name} but has no vmlinuz for {release}")
    return kernel


# Run inside the guest as root, in the console's fallback mode (the host has no udev, so the
# guest has no /dev/virtio-ports and virtme-ng cannot hand back an exit status: it is written
# to the shared run directory instead, with the command's output).
GUEST_SCRIPT = r"""
set -u
run=%(run)s
cd %(root)s
mounted=()
mountpoint -q /sys/fs/bpf || { mount -t bpf bpf /sys/fs/bpf && mounted+=(bpffs); }
mountpoint -q /sys/kernel/tracing || { mount -t tracefs tracefs /sys/kernel/tracing && mounted+=(tracefs); }
mountpoint -q /sys/kernel/debug || { mount -t debugfs debugfs /sys/kernel/debug && mounted+=(debugfs); }
# the hybrid cgroup layout of the machines here (v1 hierarchies, cgroup2 at .../unified):
# the tests make pod-shaped cgroups in both
if [ ! -d /sys/fs/cgroup/unified ]; then
    umount /sys/fs/cgroup 2>/dev/null
    mount -t tmpfs -o mode=755 tmpfs /sys/fs/cgroup
    for c in cpu cpuacct cpuset memory devices freezer blkio pids; do
        mkdir -p /sys/fs/cgroup/$c && mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c
    done
    mkdir -p /sys/fs/cgroup/systemd && mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
    mkdir -p /sys/fs/cgroup/unified && mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
    mounted+=(cgroup-hybrid)
fi
# Python and this repository from a second export of / with the guest's page cache on
# (cache=loose; virtme-ng's root is uncached 9p): imports take half the time
root=%(root)s python_home=%(python_home)s
mkdir -p /run/obi/cached /run/obi/upper /run/obi/work /run/obi/build
if mount -t 9p -o trans=virtio,version=9p2000.L,cache=loose,msize=512000,ro obiroot /run/obi/cached; then
    { [ -z "$python_home" ] || mount --bind "/run/obi/cached$python_home" "$python_home"; } &&
    mount --bind "$root/build" /run/obi/build &&
    mount -t overlay -o "lowerdir=/run/obi/cached$root,upperdir=/run/obi/upper,workdir=/run/obi/work" \
        obi-repo "$root" &&
    mount --move /run/obi/build "$root/build" && cd "$root" && mounted+=(cached-9p)
fi
ip link set lo up 2>/dev/null
export OBI_VM_KERNEL=%(name)s HOME=/tmp/obi-vm-home
export PATH=%(venv_bin)s:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
mkdir -p "$HOME"
%(env)s
uname -r > "$run/uname"
echo "%(up)s after $(cut -d' ' -f1 /proc/uptime) s of guest uptime: kernel $(uname -r)," \
     "mounted: ${mounted[*]:-nothing}"
bash -c %(command)s 2>&1 < /dev/null | tee "$run/output"
echo "${PIPESTATUS[0]}" > "$run/status"
"""


@dataclass
class GuestRun:
    kernel: FetchedKernel
    status: int  # the command's exit status
    uname: str  # uname -r in the guest
    output: str  # the command's stdout and stderr
    boot_seconds: float  # from vng's start to the guest's shell (host clock)
    wall_seconds: float
    run_dir: Path  # console.log (the whole serial console) and the files above


def _missing_tools() -> list[str]:
    """What booting a guest needs and this machine lacks."""
    path = f"{VENV_BIN}:{os.environ.get('PATH', '')}:/usr/sbin:/sbin"
    needs = {"vng": "virtme-ng (PyPI; `make setup` installs the test extras)",
             "qemu-system-x86_64": "qemu-system-x86 (Debian)",
             "busybox": "busybox-static (Debian)", "depmod": "kmod (Debian)"}
    return [f"{tool}: {why}" for tool, why in needs.items() if shutil.which(tool, path=path) is None]


def _python_home() -> str:
    """The installation the .venv's Python comes from, when outside /usr (pyenv's), else ''."""
    cfg = ROOT / ".venv" / "pyvenv.cfg"
    found = re.search(r"^home\s*=\s*(\S+)", cfg.read_text(), re.M) if cfg.is_file() else None
    if found is None:
        return ""
    home = Path(found.group(1)).resolve().parent
    return "" if home == Path("/") or Path("/usr") in (home, *home.parents) else str(home)


def boot(kernel: FetchedKernel, command: str, *, cpus: int = 2, memory: str = "3G", timeout: float = 1800,
         env: dict[str, str] | None = None, echo: TextIO | None = None, kernel_log: bool = False) -> GuestRun:
    """Boots `kernel` with the host's root file system shared (read-only; /etc, /tmp, /var ... and
    this repository copy-on-write in guest memory; build/ writable and shared), runs `command`
    with bash as root in this repository and powers off. `echo` receives the console as it comes
    (kernel lines only with `kernel_log`)."""
    missing = _missing_tools()
    if missing:
        raise VmError("cannot boot a guest, missing: " + "; ".join(missing))
    RUNS.mkdir(parents=True, exist_ok=True)
    for old in sorted(RUNS.iterdir(), key=lambda d: d.stat().st_mtime)[:-KEEP_RUNS]:
        shutil.rmtree(old, ignore_errors=True)
    run_dir = Path(tempfile.mkdtemp(prefix=f"{kernel.name}-{time.strftime('%Y%m%d-%H%M%S')}-", dir=RUNS))
    exports = "\n".join(f"export {k}={shlex.quote(v)}" for k, v in (env or {}).items())
    script = GUEST_SCRIPT % {"name": shlex.quote(kernel.name), "run": shlex.quote(str(run_dir)),
                             "python_home": shlex.quote(_python_home()),
                             "root": shlex.quote(str(ROOT)), "venv_bin": shlex.quote(str(VENV_BIN)),
                             "env": exports, "up": GUEST_UP, "command": shlex.quote(command)}
    (run_dir / "guest.sh").write_text(script)
    argv = ["vng", "--run", str(kernel.image), "--disable-kvm", "--cpus", str(cpus), "--memory", memory,
            # 9p: Debian 12's virtiofsd is QEMU's C one, which virtme-ng tries and fails with, 6 s
            "--verbose", "--force-9p", "--cwd", str(ROOT), "--overlay-rwdir", str(ROOT),
            "--rwdir", str(ROOT / "build"), "--append", "loglevel=4",
            # / again, for the guest to mount with its page cache on (GUEST_SCRIPT)
            "--qemu-opts=-virtfs local,path=/,mount_tag=obiroot,security_model=none,readonly=on,"
            "multidevs=remap",
            "--exec", f"bash {shlex.quote(str(run_dir / 'guest.sh'))}"]
    host_env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}:/usr/sbin:/sbin"}
    start = time.monotonic()
    boot_seconds = -1.0
    with open(run_dir / "console.log", "w", buffering=1) as console:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, errors="replace", env=host_env, cwd=ROOT,
                                start_new_session=True)
        assert proc.stdout is not None
        try:
            with _deadline(proc, timeout):
                for raw in proc.stdout:
                    line = raw.replace("\r", "")
                    console.write(line)
                    if boot_seconds < 0 and line.startswith(GUEST_UP):
                        boot_seconds = time.monotonic() - start
                    if echo is not None and (kernel_log or (boot_seconds >= 0 and not PRINTK.match(line))):
                        echo.write(line)
                        echo.flush()
                proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    wall = time.monotonic() - start
    status_file = run_dir / "status"
    if not status_file.is_file():
        # the command's output so far if it had started, else the console (boot messages)
        shown = run_dir / "output" if (run_dir / "output").is_file() else run_dir / "console.log"
        tail = "".join(shown.read_text(errors="replace").splitlines(keepends=True)[-80:])
        reason = f"timed out after {timeout:.0f} s" if wall >= timeout else f"vng exited {proc.returncode}"
        raise VmError(f"kernel {kernel.release}: the guest gave no exit status ({reason}); "
                      f"console in {run_dir / 'console.log'}; the end of {shown.name}:\n{tail}")
    return GuestRun(kernel, int(status_file.read_text()), (run_dir / "uname").read_text().strip(),
                    (run_dir / "output").read_text(errors="replace"), boot_seconds, wall, run_dir)


@contextlib.contextmanager
def _deadline(proc: subprocess.Popen[str], timeout: float) -> Iterator[None]:
    """Kills the guest's process group (vng, qemu) when `timeout` passes."""
    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tests.matrix.vm", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="action", required=True)
    f = sub.add_parser("fetch", help="fetch the kernels (those of the matrix by default) into build/kernels/")
    f.add_argument("kernels", nargs="*", help=f"names: {', '.join(KERNELS_KNOWN)}")
    f.add_argument("--refresh", action="store_true", help="fetch the newest package even if one is there")
    r = sub.add_parser("run", help="boot KERNEL and run COMMAND (bash, root, in this repository)")
    r.add_argument("kernel", help=f"one of {', '.join(KERNELS_KNOWN)}")
    r.add_argument("--cpus", type=int, default=2)
    r.add_argument("--memory", default="3G")
    r.add_argument("--timeout", type=float, default=3600, help="seconds before the guest is killed")
    r.add_argument("--kernel-log", action="store_true", help="show the kernel's console too")
    r.add_argument("command", nargs="*", help="-- COMMAND [ARG...]: one argument is a shell command line")
    argv = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "--" in argv:  # what follows is the command's own, options included
        command = argv[argv.index("--") + 1:]
        argv = argv[:argv.index("--")]
    args = parser.parse_args(argv)
    try:
        if args.action == "fetch":
            for name in args.kernels or MATRIX:
                k = fetch(name, refresh=args.refresh)
                print(f"{name}: {k.package} {k.version} ({k.image.relative_to(ROOT)})")
            return 0
        command = args.command + command
        if not command:
            parser.error("run: no command (tools/vm-run 6.1 -- uname -r)")
        kernel = fetch(args.kernel)
        shell = command[0] if len(command) == 1 else shlex.join(command)
        done = boot(kernel, shell, cpus=args.cpus, memory=args.memory, timeout=args.timeout,
                    echo=sys.stdout, kernel_log=args.kernel_log)
        print(f"obi-vm: {kernel.package} {kernel.version}, guest uname -r {done.uname}; "
              f"exit status {done.status}; boot {done.boot_seconds:.1f} s, total {done.wall_seconds:.1f} s; "
              f"files in {done.run_dir.relative_to(ROOT)}", file=sys.stderr)
        return done.status
    except VmError as e:
        print(f"obi-vm: {e}", file=sys.stderr)
        return 125


if __name__ == "__main__":
    sys.exit(main())
