"""The command lines speak alike: every one's --help ends with examples and its exit codes, and
asking for help never starts TensorFlow (a newcomer's first command answers at once)."""
import subprocess
import sys

import pytest

from .conftest import REPO

COMMANDS = ["train", "train.grid", "train.distill", "train.kfold", "train.recalibrate", "export", "benchmarks",
            "benchmarks.calibrate", "benchmarks.cost", "edge_runtime"]


@pytest.mark.parametrize("module", COMMANDS)
def test_help_has_examples_and_exit_codes(module):
    code = (f"import runpy, sys; sys.argv = ['x', '--help']\n"
            f"try:\n    runpy.run_module({module!r}, run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\n"
            "print('@@', code, sorted(m for m in ('tensorflow', 'keras') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    lines = r.stdout.splitlines()
    assert "\nexamples:\n" in r.stdout and "\nexit codes:" in r.stdout, r.stdout
    assert lines[-1] == "@@ 0 []", (module, lines[-1])
