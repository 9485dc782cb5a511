"""Subcommand registration: each package adds its own commands; hostd is passed through whole."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from heapballoon import cli

PACKAGE = Path(cli.__file__).resolve().parent


def subcommands(parser) -> list[str]:
    return [c for a in parser._subparsers._group_actions for c in a.choices]  # test-only introspection


def test_every_command_is_registered_once():
    assert subcommands(cli.build_parser()) == ["daemon", "run", "attach", "agent-path", "guest-unit", "status", "target",
                                               "policy", "experiment", "image", "vm", "libvirt", "hostd", "guest-driver"]


def test_hostd_gets_every_argument_help_included(monkeypatch, capsys):
    seen = []
    monkeypatch.setitem(cli.PASSTHROUGH, "hostd", ("help", lambda argv: seen.append(argv) or 3))
    assert cli.main(["hostd", "--run-dir", "/tmp/x", "-v", "--help"]) == 3
    assert seen == [["--run-dir", "/tmp/x", "-v", "--help"]]


def test_hostd_help_is_hostds_own(capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["hostd", "--help"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("usage: heapballoon hostd")


def test_hostd_errors_are_one_line(monkeypatch, capsys):
    from heapballoon.errors import VMError

    def boom(argv):
        raise VMError("no run dir")

    monkeypatch.setitem(cli.PASSTHROUGH, "hostd", ("help", boom))
    assert cli.main(["hostd"]) == 1
    assert capsys.readouterr().err == "heapballoon: error: no run dir\n"


def test_no_argparse_internals_in_command_registration():
    for rel in ("cli.py", "vm/cli.py"):
        tree = ast.parse((PACKAGE / rel).read_text())
        private = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr.startswith("_")
                   and n.attr not in ("__file__", "__version__")}
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not private, f"{rel} reaches into {private}"
        assert "_name_parser_map" not in strings and "\x01" not in strings, rel


@pytest.mark.parametrize("argv", [["vm", "exec", "g1", "--timeout-s", "7", "--", "echo", "hi"],
                                  ["vm", "exec", "--timeout-s", "7", "g1", "--", "echo", "hi"],
                                  ["vm", "exec", "g1", "--timeout-s=7", "--", "echo", "hi"]])
def test_vm_exec_takes_timeout_before_or_after_the_name(monkeypatch, argv):
    import heapballoon.vm.execclient as execclient
    seen = []
    monkeypatch.setattr(execclient, "vm_exec", lambda name, cmd, timeout_s: seen.append((name, cmd, timeout_s)) or (0, "", ""))
    assert cli.main(argv) == 0
    assert seen == [("g1", ["echo", "hi"], 7.0)]


def test_vm_exec_bad_timeout_is_one_line(capsys):
    assert cli.main(["vm", "exec", "g1", "--timeout-s", "soon", "--", "true"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--timeout-s takes seconds" in err
