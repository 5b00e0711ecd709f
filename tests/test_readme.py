"""The README's ingest examples work as written: each example of the ingest section's ```bash block,
pasted into a new shell (nothing exported) next to a running API in dev mode, as `make up` runs it,
answers as the README documents."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest

from ingest_service.core.config import DEV_PROVISION_SECRET
from ingest_service.core.database import DatabaseTarget
from tests.utils.processes import PROJECT_ROOT, running_api

README = PROJECT_ROOT / "README.md"
README_API = "localhost:8000"

# What each example answers, in README order: (status, reason) per item.
DOCUMENTED = [
    [("ok", None)],
    [("ok", None), ("invalid", "missing_field")],
    [("ok", None), ("invalid", "invalid_json")],
    [("provisioned", None)],
]


def ingest_examples() -> list[str]:
    """The ingest section's ```bash blocks, one example per paragraph."""
    text = README.read_text()
    section = re.search(r"^## The ingest API\n(.*?)^## ", text, re.DOTALL | re.MULTILINE)
    assert section, "README has no ingest section"
    blocks = re.findall(r"^```bash\n(.*?)^```", section.group(1), re.DOTALL | re.MULTILINE)
    return [example.strip() for block in blocks for example in block.split("\n\n") if example.strip()]


def test_readme_ingest_examples_are_the_documented_ones() -> None:
    examples = ingest_examples()
    assert len(examples) == len(DOCUMENTED), examples
    assert all("curl" in example and README_API in example for example in examples)


@pytest.mark.slow
def test_readme_ingest_examples_answer_as_documented(fresh_db: DatabaseTarget) -> None:
    # A new shell: none of the platform's settings exported, PROVISION_SECRET included.
    shell_env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TERM")}
    with running_api(fresh_db, DEV_PROVISION_SECRET, DEV_MODE="1") as base:
        for example, documented in zip(ingest_examples(), DOCUMENTED, strict=True):
            command = example.replace(README_API, base.removeprefix("http://"))
            result = subprocess.run(["bash", "-c", command], env=shell_env, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, (example, result.stderr)
            answer = json.loads(result.stdout)
            items = answer if isinstance(answer, list) else [answer]
            assert [(item["status"], item.get("reason")) for item in items] == documented, (example, answer)
            assert all(isinstance(item["raw_id"], int) for item in items)
            if documented == [("provisioned", None)]:
                assert items[0]["device_id"] == 7  # the upgraded legacy device keeps its id
