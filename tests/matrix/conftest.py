"""Inside a matrix guest (OBI_VM_KERNEL set by tests/matrix/vm.py) the matrix is not collected:
it would boot a guest in the guest."""

from __future__ import annotations

import os

collect_ignore_glob = ["test_*.py"] if os.environ.get("OBI_VM_KERNEL") else []
