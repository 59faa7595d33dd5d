"""The `helmrec` front door: version, every subcommand reachable, tools' own help, init-repository."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest

from helmrec.cli import COMMANDS, TOOLS, main
from helmrec.launcher.repository import WEIGHTS


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"helmrec {version('helmrec')}"


def test_every_subcommand_is_listed(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["--help"]) == 0
    listing = capsys.readouterr().out
    for name in [*COMMANDS, *TOOLS]:
        assert f"    {name} " in listing or f"    {name}\n" in listing, name


def test_an_unknown_subcommand_is_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["no-such-tool"]) == 2
    assert "invalid choice: 'no-such-tool'" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(TOOLS))
def test_a_tool_prints_its_own_help_under_helmrec(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The rest of the line reaches the tool's own parser (its flags, not helmrec's)."""
    assert _exit_code([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: "), out[:200]
    assert "COMMAND" not in out.splitlines()[0]
    if name != "calibrate":  # calibrate names its own prog
        assert out.startswith(f"usage: helmrec {name} ")


def test_a_tool_gets_the_rest_of_the_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code(["bound", "--no-such-flag"]) == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_a_command_adds_its_arguments(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _exit_code([name, "--help"]) == 0
    assert capsys.readouterr().out.startswith(f"usage: helmrec {name} ")


def test_route_does_not_import_torch() -> None:
    """The router runs on CPU-only front-end hosts; its command must not pay for torch."""
    probe = (
        "import sys\n"
        "from helmrec.cli import main\n"
        "try:\n    main(['route', '--help'])\nexcept SystemExit:\n    pass\n"
        "sys.stdout.flush()\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH', file=sys.stderr)\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip().splitlines()[-1] == "NO-TORCH"


def test_init_repository_writes_a_seeded_network(tmp_path: Path) -> None:
    first, second, other = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    assert main(["init-repository", str(first), "--preset", "tiny", "--seed", "3"]) == 0
    assert main(["init-repository", str(second), "--seed", "3"]) == 0
    assert main(["init-repository", str(other), "--seed", "4"]) == 0
    for model in ("hstu", "hstu_pool", "hstu_ensemble"):
        assert (first / model / "config.pbtxt").is_file(), model
    assert (first / WEIGHTS).read_bytes() == (second / WEIGHTS).read_bytes()
    assert (first / WEIGHTS).read_bytes() != (other / WEIGHTS).read_bytes()
    assert not list(first.rglob("__pycache__"))


def test_init_repository_copies_given_weights(tmp_path: Path) -> None:
    assert main(["init-repository", str(tmp_path / "seeded"), "--seed", "5"]) == 0
    trained = tmp_path / "seeded" / WEIGHTS
    assert main(["init-repository", str(tmp_path / "copied"), "--weights", str(trained)]) == 0
    assert (tmp_path / "copied" / WEIGHTS).read_bytes() == trained.read_bytes()


def test_init_repository_refuses_what_it_cannot_serve(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tmp_path.joinpath("exists").mkdir()
    assert _exit_code(["init-repository", str(tmp_path / "exists")]) == 2
    assert "already exists" in capsys.readouterr().err
    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(b"not a weights file")
    assert _exit_code(["init-repository", str(tmp_path / "r"), "--weights", str(tmp_path / "missing.pt")]) == 2
    assert "--weights" in capsys.readouterr().err
    assert _exit_code(["init-repository", str(tmp_path / "r"), "--weights", str(foreign)]) == 2
    assert "not a loadable HSTU weights file" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert _exit_code(["init-repository", str(tmp_path / "r"), "--preset", "huge"]) == 2
    assert "invalid choice: 'huge'" in capsys.readouterr().err


def test_a_staged_repository_can_carry_a_larger_item_table(tmp_path: Path) -> None:
    """`helmrec bench --num-items`: the catalogue (and the host table hstu_pool caches rows of) grows,
    the rest of the preset stays."""
    from helmrec.launcher.repository import stage_repository
    from helmrec.serving.network import read_limits

    staged = stage_repository(tmp_path / "repo", "tiny", num_items=5000)
    assert read_limits(staged / WEIGHTS).num_items == 5000
    with pytest.raises(ValueError, match="num_items resizes a preset's item table"):
        stage_repository(tmp_path / "other", None, num_items=5000)
