"""The image, built once per session from this checkout (tools/image/build.py)."""

from __future__ import annotations

import os

import pytest

from tests.image import build_image, missing_tools


@pytest.fixture(scope="session")
def obi_image() -> str:
    """The tag of obi's image built from this checkout (localhost/obi:VERSION), on the
    debootstrapped base; built at most once per session. Fails (never skips) without root
    or the tools, as every end-to-end test on these machines."""
    if os.geteuid() != 0:
        pytest.fail("the image tests need root (podman's storage, debootstrap)")
    if missing := missing_tools():
        pytest.fail(f"{', '.join(missing)} not installed: `make deps` installs them (Debian packages)")
    tag, seconds = build_image()
    print(f"\nobi image {tag} built in {seconds:.0f}s")
    return tag
