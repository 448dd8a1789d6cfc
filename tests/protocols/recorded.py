"""The recorded exchanges under corpus/ (made by tools/record_*_corpus.py from real servers)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

CORPUS_DIR = Path(__file__).parent / "corpus"


def load_corpus(name: str) -> list[dict[str, Any]]:
    """Each case: name, commands (in order), request and response (bytes)."""
    cases = [json.loads(line) for line in (CORPUS_DIR / f"{name}.jsonl").read_text().splitlines()]
    for case in cases:
        case["request"] = base64.b64decode(case["request"])
        case["response"] = base64.b64decode(case["response"])
    return cases
