"""The command line, driven in-process with click's CliRunner: help, version, schema, examples,
and verify's handling of bad specs and bad usage (exit code 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from stagewarden._version import __version__
from stagewarden.cli import cli
from stagewarden.cli.common import EXIT_BAD_INPUT, EXIT_OK, EXIT_UNKNOWN, EXIT_VIOLATED
from stagewarden.spec import example_names, example_text, json_schema


def run(*args: str) -> Result:
    """Invoke ``stagewarden ARGS`` in-process."""
    return CliRunner().invoke(cli, list(args), prog_name="stagewarden")


def test_help_lists_the_commands() -> None:
    """--help (and -h) exits 0 and lists the commands and the exit codes."""
    for flag in ("--help", "-h"):
        result = run(flag)
        assert result.exit_code == 0
        assert result.stdout.startswith("Usage: stagewarden [OPTIONS] COMMAND [ARGS]...")
        for command in ("examples", "schema", "verify"):
            assert f"  {command} " in result.stdout
        assert "Exit codes:" in result.stdout


@pytest.mark.parametrize("command", [["verify"], ["schema"], ["examples"], ["examples", "list"], ["examples", "show"]])
def test_subcommand_help(command: list[str]) -> None:
    """Every command has --help, which exits 0 and shows its usage."""
    result = run(*command, "--help")
    assert result.exit_code == 0
    assert result.stdout.startswith(f"Usage: stagewarden {' '.join(command)} ")


def test_version() -> None:
    """--version prints the package version and exits 0."""
    result = run("--version")
    assert result.exit_code == 0
    assert result.stdout == f"stagewarden, version {__version__}\n"


def test_unknown_command_is_a_usage_error() -> None:
    """An unknown command exits 2 with click's usage error."""
    result = run("frobnicate")
    assert result.exit_code == 2
    assert "No such command 'frobnicate'" in result.stderr


# -- schema -------------------------------------------------------------------------------------


def test_schema_prints_the_json_schema() -> None:
    """`schema` prints valid JSON equal to json_schema()."""
    result = run("schema")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == json_schema()


def test_schema_out_writes_the_file(tmp_path: Path) -> None:
    """`schema --out FILE` writes the schema to FILE and nothing to standard output."""
    target = tmp_path / "spec-schema.json"
    result = run("schema", "--out", str(target))
    assert result.exit_code == 0
    assert result.stdout == ""
    assert json.loads(target.read_text(encoding="utf-8")) == json_schema()
    assert [p.name for p in tmp_path.iterdir()] == ["spec-schema.json"]  # no temporary file left behind


def test_schema_out_replaces_an_existing_file(tmp_path: Path) -> None:
    """`schema --out FILE` overwrites an existing FILE."""
    target = tmp_path / "schema.json"
    target.write_text("old", encoding="utf-8")
    assert run("schema", "--out", str(target)).exit_code == 0
    assert json.loads(target.read_text(encoding="utf-8")) == json_schema()


def test_schema_out_to_a_directory_is_a_usage_error(tmp_path: Path) -> None:
    """`schema --out DIR` is refused with exit code 2."""
    result = run("schema", "--out", str(tmp_path))
    assert result.exit_code == 2
    assert "--out" in result.stderr


# -- examples ---------------------------------------------------------------------------------


def test_examples_list_names_every_example() -> None:
    """`examples list` exits 0 and names every packaged example, one per row."""
    result = run("examples", "list")
    assert result.exit_code == 0
    first_words = [
        line.split()[0] for line in result.stdout.splitlines() if line.strip() and not line.startswith(" " * 5)
    ]
    for name in example_names():
        assert name in first_words


@pytest.mark.parametrize("name", ["demo", "paper-redundant-neighbour"])
def test_examples_show_prints_numbered_lines(name: str) -> None:
    """`examples show --numbered NAME` prints the example's source with right-aligned line numbers."""
    result = run("examples", "show", "--numbered", name)
    assert result.exit_code == 0
    expected = "".join(f"{number:4d}  {line}\n" for number, line in enumerate(example_text(name).splitlines(), start=1))
    assert result.stdout == expected


def test_examples_show_unknown_name_has_a_hint() -> None:
    """`examples show` with a misspelt name exits 2 with a 'did you mean' hint."""
    result = run("examples", "show", "dmeo")
    assert result.exit_code == EXIT_BAD_INPUT
    assert result.stdout == ""
    assert result.stderr == (
        "example:dmeo:1:1: no packaged example named 'dmeo' (did you mean 'demo'?); see `stagewarden examples list`\n"
    )


# -- verify -------------------------------------------------------------------------------------
# verify returns the prover's verdicts (exit 0 all hold, 1 violated, 3 unknown), which the prover's
# own tests pin; these tests check only that a good spec is accepted, and the exit codes and
# error lines of bad input (exit 2). They never assert on the text of a successful run.


def assert_accepted(result: Result) -> None:
    """The spec loaded and verify finished: a verdict exit code, no crash."""
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert result.exit_code in (EXIT_OK, EXIT_VIOLATED, EXIT_UNKNOWN), result.output


def test_verify_packaged_example() -> None:
    """`verify --example paper-redundant-neighbour` accepts the example (a verdict, not exit 2)."""
    assert_accepted(run("verify", "--example", "paper-redundant-neighbour"))


def test_verify_spec_file_by_path() -> None:
    """`verify SPEC` loads the file at SPEC (here a packaged example's own file)."""
    path = Path(__file__).resolve().parents[1] / "stagewarden" / "spec" / "examples" / "paper-redundant-neighbour.yaml"
    assert_accepted(run("verify", str(path)))


BROKEN_SPEC = """\
version: 2
name: broken
topology:
  stages: 1
adversary:
  max_malicious: 1
  capabilities: [tamper_activations]
guarantees:
  - id: integrity
    kind: detection
"""


def test_verify_broken_spec_prints_located_errors(tmp_path: Path) -> None:
    """A broken spec prints one `file:line:column: message` line per problem and exits 2."""
    path = tmp_path / "broken.yaml"
    path.write_text(BROKEN_SPEC, encoding="utf-8")
    result = run("verify", str(path))
    assert result.exit_code == EXIT_BAD_INPUT
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"{path}:1:10: unsupported spec version 2: this stagewarden reads version 1",
        f"{path}:4:11: topology.stages must be >= 2, got 1",
    ]


def test_verify_semantic_error_exits_2(tmp_path: Path) -> None:
    """A spec that parses but breaks a whole-spec rule is bad input too (exit 2), with its location."""
    path = tmp_path / "budget.yaml"
    text = BROKEN_SPEC.replace("version: 2", "version: 1").replace("stages: 1", "stages: 2")
    path.write_text(text.replace("max_malicious: 1", "max_malicious: 3"), encoding="utf-8")
    result = run("verify", str(path))
    assert result.exit_code == EXIT_BAD_INPUT
    assert result.stderr == (
        f"{path}:6:18: adversary.max_malicious is 3 but the topology has only 2 workers "
        "(2 stages x 1 replicas + 0 standby)\n"
    )


def test_verify_broken_json_spec(tmp_path: Path) -> None:
    """A JSON syntax error is reported with its line and column, exit code 2."""
    path = tmp_path / "broken.json"
    path.write_text('{\n  "version": 1,\n  "name": \n}\n', encoding="utf-8")
    result = run("verify", str(path))
    assert result.exit_code == EXIT_BAD_INPUT
    assert result.stderr == f"{path}:4:1: JSON syntax error: Expecting value\n"


def test_verify_binary_file(tmp_path: Path) -> None:
    """A binary file is refused with a located message, exit code 2."""
    path = tmp_path / "model.yaml"
    path.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    result = run("verify", str(path))
    assert result.exit_code == EXIT_BAD_INPUT
    assert result.stderr == f"{path}:3:1: the file is binary (it contains a NUL byte), not a YAML or JSON spec\n"


def test_verify_missing_file(tmp_path: Path) -> None:
    """A missing SPEC exits 2 with 'no such file', not a traceback."""
    path = tmp_path / "nope.yaml"
    result = run("verify", str(path))
    assert result.exit_code == EXIT_BAD_INPUT
    assert result.stderr == f"{path}:1:1: no such file\n"


def test_verify_directory(tmp_path: Path) -> None:
    """A directory as SPEC exits 2 with 'is a directory'."""
    result = run("verify", str(tmp_path))
    assert result.exit_code == EXIT_BAD_INPUT
    assert result.stderr == f"{tmp_path}:1:1: is a directory, not a spec file\n"


def test_verify_unknown_example_has_a_hint() -> None:
    """`verify --example` with a misspelt name exits 2 with a 'did you mean' hint."""
    result = run("verify", "--example", "paper-redundant-neighbor")
    assert result.exit_code == EXIT_BAD_INPUT
    assert "(did you mean 'paper-redundant-neighbour'?)" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        pytest.param([], id="neither"),
        pytest.param(["spec.yaml", "--example", "demo"], id="both"),
    ],
)
def test_verify_needs_exactly_one_spec(args: list[str]) -> None:
    """Giving both SPEC and --example, or neither, is a usage error (exit 2)."""
    result = run("verify", *args)
    assert result.exit_code == 2
    assert "Usage: stagewarden verify" in result.stderr
    assert "give exactly one of SPEC or --example NAME" in result.stderr


def test_verify_bad_format_is_a_usage_error() -> None:
    """An unknown --format value is a usage error (exit 2)."""
    result = run("verify", "--example", "demo", "--format", "xml")
    assert result.exit_code == 2
    assert "Invalid value for '--format'" in result.stderr
