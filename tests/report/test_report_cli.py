"""``stagewarden report`` drives the library: a path on success, exit code 2 and one message on bad input."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from stagewarden.cli import cli


def test_report_of_an_example_prints_the_index(tmp_path: Path) -> None:
    """--example builds the report and prints the path of its index page (exit code 0)."""
    out = tmp_path / "r"
    result = CliRunner().invoke(cli, ["report", "--example", "tee-unattested", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == str(out.absolute() / "index.html")
    assert (out / "index.html").is_file()


def test_missing_spec_is_bad_input(tmp_path: Path) -> None:
    """A spec file that does not exist gives exit code 2 and no traceback."""
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert "nope.yaml" in result.output


def test_bad_run_dir_is_bad_input(tmp_path: Path) -> None:
    """A --run that is missing, or holds no run summary, gives exit code 2 with the reason."""
    runner = CliRunner()
    missing = runner.invoke(
        cli, ["report", "--example", "demo", "--run", str(tmp_path / "gone"), "--out", str(tmp_path / "r")]
    )
    assert missing.exit_code == 2 and "no such run directory" in missing.output
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(
        cli, ["report", "--example", "demo", "--run", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]
    )
    assert empty.exit_code == 2 and "summary" in empty.output and "Traceback" not in empty.output
    assert not (tmp_path / "r").exists()


def test_foreign_out_is_bad_input(tmp_path: Path) -> None:
    """An --out that holds other files is refused."""
    (tmp_path / "keep.txt").write_text("x")
    result = CliRunner().invoke(cli, ["report", "--example", "demo", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "no earlier report" in result.output
