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


def test_every_command_keeps_one_exit_code_contract(capsys):
    """edge_runtime/cli.py owns the contract: bad input exits 2 with one `PROG: error:` line, Ctrl-C 130,
    anything else is a bug and raises; every main() in the packages goes through it."""
    import ast

    from edge_runtime.cli import command, emit_result, results

    @command("python -m demo", bad_input=(KeyError,))
    def main(argv=None):
        if argv == ["bad"]:
            raise KeyError("no such thing")
        if argv == ["stop"]:
            raise KeyboardInterrupt
        if argv == ["bug"]:
            raise ZeroDivisionError("a bug")
        return None

    assert main([]) == 0
    assert main(["bad"]) == 2 and capsys.readouterr().err == "python -m demo: error: 'no such thing'\n"
    assert main(["stop"]) == 130 and capsys.readouterr().err == "python -m demo: interrupted\n"
    with pytest.raises(ZeroDivisionError):
        main(["bug"])
    print("a library's half line", end="")
    emit_result({"a": 1})
    print("more noise {not json}")
    emit_result({"b": [2]})
    assert list(results(capsys.readouterr().out)) == [{"a": 1}, {"b": [2]}]
    undecorated = []
    for pkg in ("edge_runtime", "train", "export", "benchmarks", "devices"):
        for path in sorted((REPO / pkg).glob("*.py")):
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.FunctionDef) and node.name == "main":
                    names = [ast.unparse(d.func if isinstance(d, ast.Call) else d) for d in node.decorator_list]
                    if "command" not in names:
                        undecorated.append(str(path.relative_to(REPO)))
    assert undecorated == []
