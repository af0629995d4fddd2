"""The parallel tests start gloo ranks that initialise DeepSpeed, which JIT-builds a small
shared-memory op once: keep the build where the Makefile keeps it, so it is reused."""

import os
from pathlib import Path

os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(__file__).resolve().parents[2] / ".cache" / "torch_extensions"))
