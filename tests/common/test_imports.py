"""The API ships in a small image without torch: api and common must import without it."""

from __future__ import annotations

import subprocess
import sys

BLOCKER = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"torch", "diffusers", "transformers", "worker"}:
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
import api.main, common.jobstore, common.queue, common.schemas, common.settings, common.storage
api.main.create_app()
import torch
"""


def test_api_and_common_import_without_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=60
    )
    # Everything imported; only the final, deliberate `import torch` failed.
    assert done.returncode == 1
    assert "ImportError: torch is blocked in this test" in done.stderr, done.stderr
