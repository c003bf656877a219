"""The contract every command's ``main()`` keeps, in one place.

Exit 0 when done; 1 when the work ran and failed (its own message says what); 2 on bad input: one line
on stderr, ``PROG: error: ...``, as argparse words its own; 130 on Ctrl-C (the shell's code). Commands
that start TensorFlow keep its C++ log quiet. Each command names which exceptions are bad input for it:
anything else is a bug, and its traceback is the report.
"""
from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Iterator


def error(prog: str, message) -> None:
    """The one line a command prints on bad input (or before exit 1)."""
    print(f"{prog}: error: {message}", file=sys.stderr)


def command(prog: str, bad_input: tuple = (ValueError,), tf_log: str | None = None,
            interrupted: str = "interrupted"):
    """Decorate ``main(argv=None) -> int``: ``bad_input`` exceptions exit 2 with one line, Ctrl-C exits
    130 with ``PROG: interrupted`` (or the command's own words for what it leaves behind), and
    ``tf_log`` (TensorFlow's TF_CPP_MIN_LOG_LEVEL) is set before anything imports TensorFlow, unless
    the caller set it."""
    def wrap(fn):
        @functools.wraps(fn)
        def main(argv=None) -> int:
            if tf_log is not None:
                os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", tf_log)
            try:
                code = fn(argv)
            except KeyboardInterrupt:
                print(f"{prog}: {interrupted}", file=sys.stderr)
                return 130
            except bad_input as e:
                error(prog, e)
                return 2
            return 0 if code is None else int(code)
        main.prog = prog
        return main
    return wrap


# A worker process's results on stdout, whatever else its libraries print there: one line each, this
# marker, then one JSON object. Every worker writes them with `emit_result`, every parent reads `results`.
RESULT = "@@fer-edge-result@@"


def emit_result(obj: dict) -> None:
    """Write one result line (a newline first: a library may have left a line unfinished)."""
    sys.stdout.write("\n" + RESULT + json.dumps(obj) + "\n")
    sys.stdout.flush()


def results(lines) -> Iterator[dict]:
    """The results among a worker's stdout lines (a str is split into lines), in order."""
    for line in lines.splitlines() if isinstance(lines, str) else lines:
        if line.startswith(RESULT):
            yield json.loads(line[len(RESULT):])
