"""Check a config and its overrides exactly as launch/train.py will, then print `train.output_dir`.

The batch scripts run this before starting any rank, so a wrong config name or key stops the job
(or, from submit.sh, the submission) with one sentence instead of a traceback from every rank; the deepspeed
section is checked against DeepSpeed's own config models too (a key a block lacks, a value it refuses).

    python launch/slurm/check_config.py CONFIG [--section.key value ...]
    python launch/slurm/check_config.py --array-args FILE CONFIG [--section.key value ...]

With --array-args, line N of FILE holds the overrides of job-array task N (split on spaces, after
the others: the last override wins); every line is checked and the number of lines is printed.
"""

from __future__ import annotations

import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from xmtc.config import UserError, load_config  # noqa: E402
from xmtc.config_checks import check_deepspeed_schema  # noqa: E402

USAGE = "usage: python launch/slurm/check_config.py [--array-args FILE] CONFIG [--section.key value ...]"


def array_lines(path: str) -> list[list[str]]:
    """Each line's overrides, read as train_job.sh reads them: lines end at "\\n" only (`grep -c`, `sed -n Np`),
    one trailing CR is dropped, words are split on spaces and tabs (`read -r -a`); any other white space
    (a CR inside a line, a form feed, U+00A0) would split differently there, so it is refused here."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"XMTC_ARRAY_ARGS={path} cannot be read ({e}); give a text file, line N the overrides of array task N")
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    if not lines:
        raise UserError(f"XMTC_ARRAY_ARGS={path} is empty; give one line of trainer overrides per array task")
    out = []
    for number, line in enumerate(lines, start=1):
        line = line[:-1] if line.endswith("\r") else line
        odd = next((c for c in line if c.isspace() and c not in " \t"), None)
        if odd is not None:
            raise UserError(f"XMTC_ARRAY_ARGS={path} line {number} holds the white space {odd!r} (U+{ord(odd):04X}); "
                            "separate the overrides with spaces or tabs, one task per line")
        words = [w for w in re.split(r"[ \t]+", line) if w]
        if not words:
            raise UserError(f"XMTC_ARRAY_ARGS={path} line {number} is empty; line N holds the overrides of array task N")
        out.append(words)
    return out


def main(argv: list[str]) -> int:
    import contextlib
    import io

    # DeepSpeed's log lines (its accelerator guess on a login node) are neither this script's output (the output
    # directory) nor its errors: its logger binds its stream on import, to a buffer dropped here.
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(ImportError):
        import deepspeed  # noqa: F401
    array_args = None
    if argv[:1] == ["--array-args"]:
        if len(argv) < 2:
            print(USAGE, file=sys.stderr)
            return 2
        array_args, argv = argv[1], argv[2:]
    if not argv or argv[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    try:
        if array_args is None:
            cfg = load_config(argv[0], argv[1:])
            check_deepspeed_schema(cfg.deepspeed)
            print(cfg.train.output_dir)
            return 0
        lines = array_lines(array_args)
        for number, words in enumerate(lines, start=1):
            try:
                check_deepspeed_schema(load_config(argv[0], [*argv[1:], *words]).deepspeed)
            except UserError as e:
                raise UserError(f"XMTC_ARRAY_ARGS={array_args} line {number}: {e}") from None
        print(len(lines))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
