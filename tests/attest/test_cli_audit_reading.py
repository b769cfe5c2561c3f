"""``stagewarden audit`` as a newcomer reads it: the unpinned verifier key explained once, with
the command that pins it."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from receipt_fixtures import small_run, write_run

from stagewarden.cli import cli


def test_audit_explains_the_unpinned_key_once(tmp_path: Path) -> None:
    """An audit without --verifier-key has no VERIFIER_KEY_UNPINNED row in a findings table; one
    note says what that means and gives the command that pins the key. A pinned audit has no note;
    the JSON report keeps the finding for machines."""
    run = small_run()
    path = write_run(tmp_path, run, None)
    result = CliRunner().invoke(cli, ["audit", str(path)])
    assert result.exit_code == 0, result.output
    assert result.output.count("VERIFIER_KEY_UNPINNED") == 1
    assert "audit of" not in result.output  # no findings table for a clean run
    assert "whoever wrote the directory could have written that key too" in result.output
    assert f"stagewarden audit {path} --verifier-key <64 hex digits>" in result.output
    pinned = CliRunner().invoke(cli, ["audit", str(path), "--verifier-key", run.verifier_key.hex()])
    assert pinned.exit_code == 0 and "VERIFIER_KEY_UNPINNED" not in pinned.output
    assert "(pinned)" in pinned.output
    data = json.loads(CliRunner().invoke(cli, ["audit", str(path), "--format", "json"]).output)
    assert [f["code"] for f in data["findings"]] == ["VERIFIER_KEY_UNPINNED"]
