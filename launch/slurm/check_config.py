"""Check a config and its overrides exactly as launch/train.py will, then print `train.output_dir`.

The batch scripts run this before starting any rank, so a wrong config name or key stops the job
(or, from submit.sh, the submission) with one sentence instead of a traceback from every rank.

    python launch/slurm/check_config.py CONFIG [--section.key value ...]
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from xmtc.config import UserError, load_config  # noqa: E402


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print("usage: python launch/slurm/check_config.py CONFIG [--section.key value ...]", file=sys.stderr)
        return 2
    try:
        cfg = load_config(argv[0], argv[1:])
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(cfg.train.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
