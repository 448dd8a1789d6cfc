#!/usr/bin/env python3
"""Build obi's container image with podman, with no container registry.

The base is Debian 12 made here: `debootstrap --variant=minbase bookworm` from the mirror
apt uses, slimmed like debian:bookworm-slim (no docs, man pages, locales, apt lists) and
imported with `podman import`. Its tarball is cached under build/image/, and the base is
skipped when podman already has it. Then docker/Dockerfile is built on it with
BASE_IMAGE set to it; the build reaches only the Debian mirror and PyPI.

    python3 tools/image/build.py            # or: make image
    python3 tools/image/build.py --rebuild-base --tag localhost/obi:dev

Prints the time each step took and the image's size. Needs root, podman, runc, debootstrap
(`make deps` installs them).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "image"
BASE_IMAGE = "localhost/obi-base:bookworm"
SUITE = "bookworm"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
# The only way podman runs containers on these machines (DESIGN.md, "Kernel facts"): runc
# (crun refuses the hybrid cgroup layout) and limits root can set without CAP_SYS_RESOURCE.
PODMAN_RUNTIME = ["--runtime", "runc", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
# What debian:bookworm-slim leaves out of every package installed later (its dpkg.cfg.d).
DPKG_EXCLUDES = """\
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
"""
# And its apt settings: no package kept after installing, no translations fetched.
_CLEAN = "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb || true"
APT_SLIM = (f'DPkg::Post-Invoke {{ "{_CLEAN}"; }};\nAPT::Update::Post-Invoke {{ "{_CLEAN}"; }};\n'
            'Dir::Cache::pkgcache "";\nDir::Cache::srcpkgcache "";\nAcquire::Languages "none";\n')


def version() -> str:
    text = (ROOT / "src" / "obi" / "__init__.py").read_text()
    found = re.search(r'^__version__ = "([^"]+)"', text, re.M)
    if found is None:
        raise SystemExit("obi image: no __version__ in src/obi/__init__.py")
    return found.group(1)


DEFAULT_TAG = f"localhost/obi:{version()}"


def log(message: str) -> None:
    print(f"obi image: {message}", flush=True)


def run(argv: Sequence[str], timeout: float, env: dict[str, str] | None = None, quiet: bool = False,
        capture: bool = False) -> str:
    """Runs one step (its output goes to ours unless quiet or captured); a failure or a
    timeout ends the build with the step named. Returns what it printed when captured."""
    out = subprocess.PIPE if capture else subprocess.DEVNULL if quiet else None
    try:
        done = subprocess.run(list(argv), text=True, timeout=timeout, env=env, stdout=out)
    except subprocess.TimeoutExpired:
        raise SystemExit(f"obi image: {' '.join(argv[:2])} took more than {timeout:.0f}s") from None
    if done.returncode != 0:
        raise SystemExit(f"obi image: {' '.join(argv[:3])} ... failed with exit code {done.returncode}")
    return done.stdout or ""


def require_tools() -> None:
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"obi image: {', '.join(missing)} not found: `make deps` installs them "
                         "(Debian packages podman, runc, debootstrap)")
    if os.geteuid() != 0:
        raise SystemExit("obi image: needs root (debootstrap, podman's storage)")


def apt_sources() -> list[tuple[str, list[str]]]:
    """(URI, suites) of every source apt uses here, one-line and deb822 formats."""
    sources: list[tuple[str, list[str]]] = []
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
                for uri in fields.get("URIs", "").split():
                    sources.append((uri, fields.get("Suites", "").split()))
        elif path.name == "sources.list" or path.suffix == ".list":
            for line in text.splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    sources.append((words[1], [words[2]]))
    return sources


def debian_mirrors() -> tuple[str, str]:
    """The Debian archive and security mirrors apt uses here (bookworm), or Debian's own."""
    archive = security = ""
    for uri, suites in apt_sources():
        if SUITE in suites and not archive:
            archive = uri
        if f"{SUITE}-security" in suites and not security:
            security = uri
    archive = archive or DEFAULT_MIRROR
    return archive, security or archive.rstrip("/") + "-security"


def apt_proxy() -> str:
    """apt's HTTP proxy here (Acquire::http::Proxy), for debootstrap and the build's apt."""
    done = subprocess.run(["apt-config", "shell", "PROXY", "Acquire::http::Proxy"],
                          capture_output=True, text=True, timeout=30)
    found = re.search(r"PROXY='([^']*)'", done.stdout)
    return found.group(1) if found else ""


def sources_deb822(archive: str, security: str) -> str:
    keyring = "/usr/share/keyrings/debian-archive-keyring.gpg"
    return (f"Types: deb\nURIs: {archive}\nSuites: {SUITE} {SUITE}-updates\nComponents: main\n"
            f"Signed-By: {keyring}\n\nTypes: deb\nURIs: {security}\nSuites: {SUITE}-security\n"
            f"Components: main\nSigned-By: {keyring}\n")


def slim(rootfs: Path, archive: str, security: str) -> None:
    """What debian:bookworm-slim does to its root, and its apt sources. Each package's
    copyright file stays."""
    for path in rootfs.glob("usr/share/doc/*/*"):
        if path.name == "copyright":
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    for pattern in ("usr/share/man/*", "usr/share/info/*", "usr/share/locale/*",
                    "var/cache/apt/archives/*.deb", "var/cache/apt/*.bin", "var/lib/apt/lists/*",
                    "var/log/*", "var/cache/debconf/*-old", "var/lib/dpkg/*-old"):
        for path in rootfs.glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.name != "lock":
                path.unlink()
    (rootfs / "etc/dpkg/dpkg.cfg.d/obi-slim").write_text(DPKG_EXCLUDES)
    (rootfs / "etc/apt/apt.conf.d/obi-slim").write_text(APT_SLIM)
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(sources_deb822(archive, security))
    # podman gives each container its own resolv.conf and hostname
    (rootfs / "etc/resolv.conf").write_text("")
    (rootfs / "etc/hostname").write_text("")


def image_exists(image: str) -> bool:
    return subprocess.run(["podman", "image", "exists", image], timeout=60).returncode == 0


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """One build at a time per checkout (two test sessions may ask at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_base(image: str, rebuild: bool) -> None:
    """The Debian 12 base in podman: kept if there, else imported from the cached tarball,
    else debootstrapped from the mirror (about a minute) and cached."""
    tarball = CACHE / f"{SUITE}-minbase.tar"
    if rebuild:
        tarball.unlink(missing_ok=True)
    elif image_exists(image):
        log(f"base {image}: already in podman")
        return
    start = time.monotonic()
    if not tarball.exists():
        archive, security = debian_mirrors()
        rootfs = CACHE / f"{SUITE}-rootfs"
        if rootfs.exists():
            shutil.rmtree(rootfs)
        env = dict(os.environ)
        if proxy := apt_proxy():
            env["http_proxy"] = proxy
        log(f"debootstrap --variant=minbase {SUITE} from {archive}")
        run(["debootstrap", "--variant=minbase", SUITE, str(rootfs), archive], timeout=900, env=env,
            quiet=True)
        slim(rootfs, archive, security)
        partial = tarball.with_suffix(".tar.partial")
        run(["tar", "-C", str(rootfs), "--numeric-owner", "--xattrs", "-cf", str(partial), "."], timeout=300)
        partial.rename(tarball)
        shutil.rmtree(rootfs)
    run(["podman", "import", "--change", 'CMD ["bash"]', str(tarball), image], timeout=300, quiet=True)
    log(f"base {image}: made in {time.monotonic() - start:.0f}s")


def build_args() -> list[str]:
    """The host's settings the build needs to reach the mirror and PyPI: a private CA for
    PyPI (a secret: never in a layer), pip's index, apt's proxy."""
    args: list[str] = []
    bundle = Path(os.environ.get("PIP_CERT") or os.environ.get("SSL_CERT_FILE")
                  or "/etc/ssl/certs/ca-certificates.crt")
    if bundle.is_file():
        args += ["--secret", f"id=ca-certificates,src={bundle}"]
    index = os.environ.get("PIP_INDEX_URL") or subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
        capture_output=True, text=True, timeout=60).stdout.strip()
    if index.startswith(("http://", "https://")):
        args += ["--build-arg", f"PIP_INDEX_URL={index}"]
    if (proxy := apt_proxy()) and not os.environ.get("http_proxy"):
        args += ["--build-arg", f"http_proxy={proxy}"]
    return args


def image_id(image: str) -> str:
    done = subprocess.run(["podman", "image", "inspect", "--format", "{{.Id}}", image],
                          capture_output=True, text=True, timeout=60)
    return done.stdout.strip() if done.returncode == 0 else ""


def build_image(tag: str, base: str) -> None:
    start = time.monotonic()
    log(f"building {tag} on {base}")
    previous = image_id(tag)
    run(["podman", "build", *PODMAN_RUNTIME, "--network", "host", "--layers", "--pull=never",
         "--build-arg", f"BASE_IMAGE={base}", *build_args(),
         "-f", str(ROOT / "docker" / "Dockerfile"), "-t", tag, str(ROOT)], timeout=2400)
    log(f"built {tag} in {time.monotonic() - start:.0f}s")
    # The image this tag named before, now nameless, would fill the disk build after build
    # (its layers shared with the new one stay; one in use by a container stays too).
    if previous and previous != image_id(tag):
        subprocess.run(["podman", "rmi", previous], timeout=120, capture_output=True)


def report(tag: str) -> None:
    size = json.loads(run(["podman", "image", "inspect", tag], timeout=60, capture=True))[0]["Size"]
    log(f"{tag}: {size / 1e6:.1f} MB")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tag", default=DEFAULT_TAG, help=f"the image's name (default {DEFAULT_TAG})")
    parser.add_argument("--base", default=BASE_IMAGE, help=f"the base image's name (default {BASE_IMAGE})")
    parser.add_argument("--rebuild-base", action="store_true", help="debootstrap the base again")
    args = parser.parse_args(argv)
    require_tools()
    with locked(CACHE / ".lock"):
        ensure_base(args.base, args.rebuild_base)
        build_image(args.tag, args.base)
        report(args.tag)
    return 0


if __name__ == "__main__":
    sys.exit(main())
