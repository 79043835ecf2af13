"""The command line prints the SDK's own errors as one line and keeps the traceback of
anything else (micronet.cli, micronet.runtime.errors)."""

from __future__ import annotations

import pytest

from micronet import cli
from micronet.runtime.errors import InputError, InputTypeError, MicronetError, MissingFileError, MissingPackageError


def test_sdk_errors_are_also_the_builtin_exceptions_callers_catch():
    assert issubclass(InputError, ValueError) and issubclass(InputTypeError, TypeError)
    assert issubclass(MissingFileError, FileNotFoundError) and issubclass(MissingPackageError, ImportError)
    assert all(issubclass(e, MicronetError) for e in (InputError, InputTypeError, MissingFileError, MissingPackageError))


def test_a_user_error_is_one_line_with_exit_status_2(tmp_path, capsys):
    assert cli.main(["detect", str(tmp_path / "missing.png"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("micronet detect: error: ") and err.count("\n") == 1 and "Traceback" not in err


def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path):
    # A TypeError from inside the SDK (not an InputTypeError) is a bug: it must surface,
    # not be dressed up as the user's mistake.
    import micronet.commands.detect as detect

    def broken(args):
        return len(None)  # TypeError: object of type 'NoneType' has no len()

    monkeypatch.setattr(detect, "run", broken)
    with pytest.raises(TypeError, match="NoneType"):
        cli.main(["detect", "--demo", "--out", str(tmp_path)])
