"""Shared test set-up.

TRITON_INTERPRET=1 is set here, before anything imports triton, so the Triton kernels run
through the interpreter on the CPU. Tests that compile for a GPU target do so in a subprocess
with the variable removed.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
