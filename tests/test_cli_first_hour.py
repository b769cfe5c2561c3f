"""What a new user meets in the first hour: examples that start a spec, the same ``--example`` on
every command that reads a spec, a "did you mean" for every choice-valued flag, distinct example
descriptions, and tables that do not wrap when the output is not a terminal."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from stagewarden.cli import cli
from stagewarden.cli.common import Choice, nearest_choice
from stagewarden.spec import example_names, example_text, load_example, load_spec


def test_examples_show_redirected_is_the_plain_yaml(tmp_path: Path) -> None:
    """``examples show NAME > spec.yaml`` writes the example exactly, and the file loads as a spec."""
    result = CliRunner().invoke(cli, ["examples", "show", "demo"])
    assert result.exit_code == 0, result.output
    assert result.output == example_text("demo")
    spec = tmp_path / "spec.yaml"
    spec.write_text(result.output, encoding="utf-8")
    assert load_spec(str(spec)).spec.name == "demo"


def test_examples_show_plain_flag_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the lines are numbered for people; ``--plain`` gives the YAML as it is."""
    import re
    import sys

    runner = CliRunner()

    def show(*flags: str) -> str:
        with runner.isolation() as (out, _err, _):
            monkeypatch.setattr(sys.stdout, "isatty", lambda: True, raising=False)
            with pytest.raises(SystemExit) as exit_info:
                cli.main(["examples", "show", "demo", *flags], prog_name="stagewarden")
            assert exit_info.value.code == 0
            return out.getvalue().decode()

    numbered = re.sub(r"\x1b\[[0-9;]*m", "", show())
    assert numbered.splitlines()[1].split()[:2] == ["2", "version:"]
    assert show("--plain") == example_text("demo")


def test_train_takes_a_packaged_example(tmp_path: Path) -> None:
    """``train --example demo`` takes the demo spec's topology and defence (shown through --prepare,
    which writes the run's configuration without training)."""
    folder = tmp_path / "prepared"
    result = CliRunner().invoke(cli, ["train", "--example", "demo", "--prepare", str(folder), "--out", "run"])
    assert result.exit_code == 0, result.output
    config = json.loads((folder / "run.json").read_text(encoding="utf-8"))
    spec = load_example("demo").spec
    assert config["stages"] == spec.topology.stages
    assert config["standby"] == spec.topology.standby
    assert config["verification"] == "spot_check"
    assert config["spot_check_rate"] == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--example", "dmo"], "did you mean 'demo'?"),
        (["--example", "demo", "--spec", "x.yaml"], "not both"),
    ],
)
def test_train_example_bad_input(args: list[str], message: str, tmp_path: Path) -> None:
    """A misspelt example is named with the nearest one; --spec and --example exclude each other."""
    result = CliRunner().invoke(cli, ["train", *args, "--out", str(tmp_path / "run")])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "run").exists()


def _choice_options() -> list[tuple[str, click.Option]]:
    """Every choice-valued option of every command, with the command's path."""
    found: list[tuple[str, click.Option]] = []

    def walk(command: click.Command, path: str) -> None:
        for param in command.params:
            if isinstance(param, click.Option) and isinstance(param.type, click.Choice):
                found.append((path, param))
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                walk(sub, f"{path} {name}".strip())

    walk(cli, "")
    return found


def test_every_choice_flag_suggests_the_nearest_choice() -> None:
    """Each choice-valued flag of every command answers a typo with the nearest choice and exit 2."""
    options = _choice_options()
    assert len(options) >= 10
    flags = {(path, option.opts[0]) for path, option in options}
    assert ("train", "--attack") in flags and ("verify", "--format") in flags
    for path, option in options:
        assert isinstance(option.type, Choice), f"{path} {option.opts[0]} does not suggest"
        choice = str(option.type.choices[0])
        typo = choice[:-1] + ("x" if choice[-1] != "x" else "y") if len(choice) > 3 else choice.upper()
        context = click.Context(cli)
        with pytest.raises(click.BadParameter) as info:
            option.type.convert(typo, option, context)
        assert f"did you mean {choice!r}?" in str(info.value.message), (path, option.opts[0], info.value.message)


def test_attack_typo_from_the_command_line(tmp_path: Path) -> None:
    """``train --attack revrese`` names 'reverse' and exits 2 before anything is written."""
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--attack", "revrese", "--malicious", "1", "--out", str(out)])
    assert result.exit_code == 2
    assert "did you mean 'reverse'?" in result.output
    assert not out.exists()


def test_attack_choices_are_the_runtime_kinds() -> None:
    """``--attack`` accepts exactly the attack kinds the runtime mounts."""
    from stagewarden.cli.train import ATTACK_NAMES
    from stagewarden.runtime.attacks import AttackKind

    assert list(ATTACK_NAMES) == [k.value for k in AttackKind]


def test_nearest_choice_finds_typos_and_case_only() -> None:
    """A transposition, a dropped letter and another case find their choice; nonsense finds none."""
    choices = ["gpipe", "1f1b", "spot_check", "redundant_neighbour"]
    assert nearest_choice("gpip", choices) == "gpipe"
    assert nearest_choice("spot-check", choices) == "spot_check"
    assert nearest_choice("1F1B", choices) == "1f1b"
    assert nearest_choice("zzzz", choices) is None


def test_example_descriptions_are_distinct() -> None:
    """No two packaged examples share a description: each says what sets it apart."""
    descriptions: dict[str, str] = {}
    for name in example_names():
        text = " ".join(load_example(name).spec.description.split())
        assert text not in descriptions, f"{name} and {descriptions.get(text)} have the same description"
        descriptions[text] = name


def test_tables_are_not_wrapped_when_not_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Piped output (CliRunner's is not a terminal) keeps each example on one line of the table;
    ``COLUMNS`` still sets a width where a user wants one."""
    monkeypatch.delenv("COLUMNS", raising=False)
    output = CliRunner().invoke(cli, ["examples", "list"]).output
    rows = [line for line in output.splitlines() if line.strip()]
    assert len(rows) == len(example_names()) + 1
    assert max(len(row) for row in rows) > 100
    monkeypatch.setenv("COLUMNS", "80")
    narrow = CliRunner().invoke(cli, ["examples", "list"]).output
    assert max(len(row) for row in narrow.splitlines()) <= 80
    assert len(narrow.splitlines()) > len(rows)


def test_synthesize_writes_the_file_its_proof_cites(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``synthesize`` writes the spec with the defence it found, and every ``file:line`` the printed
    proof cites is a non-blank line of that file, with the defence in it."""
    import re

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["synthesize", "--example", "demo"])
    assert result.exit_code == 0, result.output
    written = tmp_path / "demo.synthesized.yaml"
    assert "written to demo.synthesized.yaml" in result.output
    loaded = load_spec(str(written))
    assert loaded.spec.defense.checks and loaded.spec.defense.checks[0].scheme == "spot_check"
    lines = written.read_text(encoding="utf-8").splitlines()
    cited = [int(n) for n in re.findall(r"demo\.synthesized\.yaml:(\d+)", result.output)]
    assert len(cited) >= 5
    assert all(1 <= n <= len(lines) and lines[n - 1].strip() for n in cited)
    assert "example:demo.synthesized" not in result.output


def test_synthesize_from_a_file_writes_beside_it(tmp_path: Path) -> None:
    """For SPEC.yaml the file is SPEC.synthesized.yaml beside it; an earlier one is replaced whole."""
    spec = tmp_path / "mine.yaml"
    spec.write_text(example_text("paper-checked-worker-relay"), encoding="utf-8")
    out = tmp_path / "mine.synthesized.yaml"
    out.write_text("stale\n", encoding="utf-8")
    result = CliRunner().invoke(cli, ["synthesize", str(spec)])
    assert result.exit_code == 0, result.output
    assert f"written to {out}" in result.output
    assert load_spec(str(out)).spec.name == "paper-checked-worker-relay"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.synthesized.yaml", "mine.yaml"]


def test_synthesize_out_names_the_file_and_the_citations(tmp_path: Path) -> None:
    """``--out FILE`` writes there and the proof cites FILE's lines; a FILE in a folder that does
    not exist is one line and exit 2."""
    import re

    out = tmp_path / "defended.yaml"
    result = CliRunner().invoke(cli, ["synthesize", "--example", "demo", "--out", str(out)])
    assert result.exit_code == 0, result.output
    lines = out.read_text(encoding="utf-8").splitlines()
    cited = [int(n) for n in re.findall(re.escape(str(out)) + r":(\d+)", result.output)]
    assert cited and all(lines[n - 1].strip() for n in cited)
    assert "demo.synthesized.yaml" not in result.output
    missing = CliRunner().invoke(cli, ["synthesize", "--example", "demo", "--out", str(tmp_path / "no" / "x.yaml")])
    assert missing.exit_code == 2
    assert "cannot write" in missing.output and "Traceback" not in missing.output


def test_replay_guarantee_typo_names_the_nearest(tmp_path: Path) -> None:
    """``replay --guarantee integrty`` names 'integrity' and exits 2 before any run starts."""
    out = tmp_path / "replay"
    args = ["replay", "--example", "paper-adjacent-collusion", "--guarantee", "integrty", "--out", str(out)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2
    assert "did you mean 'integrity'?" in result.output
    assert not out.exists()
