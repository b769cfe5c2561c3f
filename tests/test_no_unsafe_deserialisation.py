"""No code path of the package may run code-executing deserialisation on data that crossed a trust
boundary: no pickle, no torch.distributed object collectives (they pickle), and torch.load only
with weights_only=True. Checked on the syntax tree of every source file of the package."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("stagewarden", "spec", "prover", "attest", "runtime", "report")
#: Calls that unpickle (or pickle for a peer to unpickle), whatever module they come from.
FORBIDDEN = {
    "send_object_list",
    "recv_object_list",
    "broadcast_object_list",
    "all_gather_object",
    "gather_object",
    "scatter_object_list",
    "loads",
    "load",
}
#: Modules whose ``load``/``loads`` execute code.
UNSAFE_MODULES = {"pickle", "cPickle", "dill", "marshal", "shelve", "joblib"}


def _sources() -> list[Path]:
    return sorted(p for d in PACKAGE_DIRS for p in (ROOT / d).rglob("*.py") if "_build" not in p.parts)


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if any(str(n).split(".")[0] in UNSAFE_MODULES for n in names if n):
                found.append(f"{path.name}:{node.lineno}: imports an unpickling module")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
        if name in FORBIDDEN - {"load", "loads"}:
            found.append(f"{path.name}:{node.lineno}: {name} pickles its payload")
        if name == "load" and owner == "torch":
            safe = any(
                k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                for k in node.keywords
            )
            if not safe:
                found.append(f"{path.name}:{node.lineno}: torch.load without weights_only=True")
    return found


def test_no_code_executing_deserialisation_in_the_package() -> None:
    sources = _sources()
    assert len(sources) > 50
    assert [v for path in sources for v in _violations(path)] == []


def test_the_checker_catches_what_it_forbids(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import pickle\nimport torch\nimport torch.distributed as dist\n"
        "torch.load(f)\ntorch.load(f, weights_only=False)\ndist.recv_object_list(x, 1)\n"
        "torch.load(f, weights_only=True)\n",
        encoding="utf-8",
    )
    found = _violations(bad)
    assert len(found) == 4, found
