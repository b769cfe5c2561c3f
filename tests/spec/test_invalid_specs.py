"""Invalid specs, table-driven: each case is a small edit of one valid base spec, with the exact
``file:line:column: message`` diagnostics the loader must report."""

# Expected diagnostics stay on one line each, as the loader prints them: easier to read and grep.
# ruff: noqa: E501

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from stagewarden.spec import SpecError, load_bytes, load_spec, load_text

# Line numbers are written down the left margin so that the expectations below are easy to check.
BASE_LINES = [
    "version: 1",  # 1
    "name: base",  # 2
    "description: a minimal valid spec",  # 3
    "topology:",  # 4
    "  stages: 4",  # 5
    "  replicas: 3",  # 6
    "  microbatches: 2",  # 7
    "  steps: 100",  # 8
    "  standby: 1",  # 9
    "trust:",  # 10
    '  honest: [0, "3:1"]',  # 11
    "  tee: []",  # 12
    "  coordinator: trusted",  # 13
    "adversary:",  # 14
    "  max_malicious: 2",  # 15
    "  collusion: true",  # 16
    "  capabilities: [tamper_activations, tamper_gradients]",  # 17
    "  faults:",  # 18
    "    crash: 0",  # 19
    "    silent_corruption: 0.0",  # 20
    "defense:",  # 21
    "  receipts: true",  # 22
    "  attestation: false",  # 23
    "  checks:",  # 24
    "    - scheme: redundant_neighbour",  # 25
    "      input_via: coordinator",  # 26
    "    - scheme: spot_check",  # 27
    "      rate: 0.5",  # 28
    "      verifier: coordinator",  # 29
    "    - scheme: replicate",  # 30
    "      factor: 2",  # 31
    "      resolve: majority",  # 32
    "    - scheme: robust_aggregation",  # 33
    "      rule: median",  # 34
    "  response: [eject, rollback]",  # 35
    "  checkpoint_every: 10",  # 36
    "guarantees:",  # 37
    "  - id: integrity",  # 38
    "    kind: detection",  # 39
    "    of: [tamper_activations]",  # 40
    "    probability: 1.0",  # 41
    "  - id: damage",  # 42
    "    kind: bounded_damage",  # 43
    "    max_undetected: 0",  # 44
    "    probability: 1 - 1e-6",  # 45
    "  - id: cheap",  # 46
    "    kind: overhead",  # 47
    "    max_compute: 0.5",  # 48
]
BASE = "\n".join(BASE_LINES) + "\n"
# 4 stages x 3 replicas x 2 copies (replicate factor 2) + 1 standby.
TOTAL_WORKERS = 25

F = "spec.yaml"


def edit(line: int, text: str | None = None, *, through: int | None = None) -> str:
    """BASE with lines ``line``..``through`` (1-based, inclusive; default just ``line``) replaced
    by ``text``, which may span several lines; ``None`` deletes them."""
    lines = list(BASE_LINES)
    lines[line - 1 : through or line] = [] if text is None else text.split("\n")
    return "\n".join(lines) + "\n"


def case(source: str | bytes, *expected: str, id: str, file: str = F) -> object:
    """One table row: the document, every diagnostic the loader must report, and a readable id."""
    return pytest.param(source, file, list(expected), id=id)


CAPS = "tamper_activations, tamper_gradients, tamper_weights, poison_data, equivocate, withhold, false_accuse"
SCHEMES = "redundant_neighbour, spot_check, replicate, statistical, robust_aggregation"
KINDS = "detection, bounded_damage, no_framing, liveness, data_integrity, overhead"
RESPONSES = "eject, rollback, skip_stage, restart"
ROOT_KEYS = "adversary, defense, description, guarantees, name, topology, trust, version"
ANCHORS = "YAML anchors and aliases (&name, *name) are not allowed in a spec: write each value out"
EMPTY = "the spec is empty: expected a mapping with version, name, topology, adversary and guarantees"

CASES = [
    # -- unknown keys ------------------------------------------------------------------------
    case(
        edit(1, "versoin: 1"), f"{F}:1:1: unknown key 'versoin' (did you mean 'version'?)", id="unknown-root-key-hint"
    ),
    case(
        edit(5, "  stagse: 4"),
        f"{F}:5:3: unknown key 'stagse' in topology (did you mean 'stages'?)",
        id="unknown-nested-key-hint",
    ),
    case(
        edit(26, "      input_vai: coordinator"),
        f"{F}:26:7: unknown key 'input_vai' in defense.checks[0] (did you mean 'input_via'?)",
        id="unknown-check-key-hint",
    ),
    case(
        edit(3, "colour: blue"),
        f"{F}:3:1: unknown key 'colour'; allowed keys: {ROOT_KEYS}",
        id="unknown-root-key-no-match",
    ),
    case(
        edit(7, "  colour: 2"),
        f"{F}:7:3: unknown key 'colour' in topology; allowed keys: microbatches, replicas, stages, standby, steps",
        id="unknown-nested-key-no-match",
    ),
    case(
        edit(5, "  zzz: 4"),
        f"{F}:4:1: missing required key 'stages' in topology",
        f"{F}:5:3: unknown key 'zzz' in topology; allowed keys: microbatches, replicas, stages, standby, steps",
        id="unknown-key-in-place-of-required-key",
    ),
    case(
        edit(2, 'name: base\n"line\\nbreak": 1'),
        f"{F}:3:1: unknown key 'line\\nbreak'; allowed keys: {ROOT_KEYS}",
        id="unknown-key-with-newline-escaped",
    ),
    # -- wrong types --------------------------------------------------------------------------
    case(
        edit(5, "  stages: four"),
        f"{F}:5:11: topology.stages must be an integer, got the string 'four'",
        id="string-for-int",
    ),
    case(edit(5, "  stages: true"), f"{F}:5:11: topology.stages must be an integer, got a boolean", id="bool-for-int"),
    case(
        edit(5, "  stages: 4.5"),
        f"{F}:5:11: topology.stages must be an integer, got the number 4.5",
        id="float-for-int",
    ),
    case(edit(5, "  stages: null"), f"{F}:5:11: topology.stages must be an integer, got null", id="null-for-int"),
    case(
        edit(5, "  stages:"), f"{F}:5:3: topology.stages must be an integer, got null", id="empty-value-points-at-key"
    ),
    case(
        edit(4, "topology: [4, 3]", through=9),
        f"{F}:4:11: topology must be a mapping, got a list",
        id="list-for-mapping",
    ),
    case(
        edit(11, "  honest: {stage: 0}"),
        f"{F}:11:11: trust.honest must be a list, got a mapping",
        id="mapping-for-list",
    ),
    case(
        edit(17, "  capabilities: tamper_activations"),
        f"{F}:17:17: adversary.capabilities must be a list, got the string 'tamper_activations'",
        id="string-for-list",
    ),
    case(
        edit(16, "  collusion: yes"),
        f"{F}:16:14: adversary.collusion must be true or false, got the string 'yes'",
        id="yes-for-bool",
    ),
    case(edit(3, "description: 5"), f"{F}:3:14: description must be a string, got the integer 5", id="int-for-string"),
    case(edit(38, "  - id: 7"), f"{F}:38:9: guarantees[0].id must be a string, got the integer 7", id="int-for-id"),
    case(
        edit(41, "    probability: true"),
        f"{F}:41:18: guarantees[0].probability must be a number in [0, 1] or '1 - EPSILON', got a boolean",
        id="bool-for-probability",
    ),
    case(
        edit(11, "  honest: [0, 1.5]"),
        f"{F}:11:15: trust.honest[1] must be a stage index (3) or a worker ('3:1'), got the number 1.5",
        id="float-for-worker",
    ),
    case(
        edit(15, "  max_malicious: null"),
        f"{F}:15:18: adversary.max_malicious must be a whole number (2) or a percentage ('10%'), got null",
        id="null-for-budget",
    ),
    case(
        edit(39, "    kind: [detection]"),
        f"{F}:39:11: guarantees[0].kind must be a guarantee kind ({KINDS}), got a list",
        id="list-for-kind",
    ),
    case(edit(2, "name: 2024-01-01"), f"{F}:2:7: name must be a string, got a date", id="date-for-string"),
    # -- out-of-range values ------------------------------------------------------------------
    case(edit(5, "  stages: 1"), f"{F}:5:11: topology.stages must be >= 2, got 1", id="stages-1"),
    case(edit(6, "  replicas: 0"), f"{F}:6:13: topology.replicas must be >= 1, got 0", id="replicas-0"),
    case(edit(9, "  standby: -1"), f"{F}:9:12: topology.standby must be >= 0, got -1", id="standby-negative"),
    case(edit(28, "      rate: 0"), f"{F}:28:13: defense.checks[1].rate must be > 0.0, got 0", id="rate-0"),
    case(edit(28, "      rate: 1.5"), f"{F}:28:13: defense.checks[1].rate must be <= 1.0, got 1.5", id="rate-1.5"),
    case(edit(31, "      factor: 1"), f"{F}:31:15: defense.checks[2].factor must be >= 2, got 1", id="factor-1"),
    case(
        edit(41, "    probability: 1.5"),
        f"{F}:41:18: guarantees[0].probability: probability 1.5 is not in [0, 1]",
        id="probability-1.5",
    ),
    case(
        edit(41, "    probability: .nan"),
        f"{F}:41:18: guarantees[0].probability: probability nan is not in [0, 1]",
        id="probability-nan",
    ),
    case(
        edit(45, '    probability: "1 - 2"'),
        f"{F}:45:18: guarantees[1].probability: probability '1 - 2' is not in [0, 1]",
        id="probability-complement-negative",
    ),
    case(
        edit(45, "    probability: 1 - 1e-99999999"),
        f"{F}:45:18: guarantees[1].probability: '1 - 1e-99999999' is not a probability: write a number in [0, 1] or '1 - EPSILON'",
        id="probability-huge-exponent",
    ),
    case(
        edit(48, "    max_compute: -0.1"),
        f"{F}:48:18: guarantees[2].max_compute must be >= 0.0, got -0.1",
        id="max-compute-negative",
    ),
    case(
        edit(44, "    max_undetected: -1"),
        f"{F}:44:21: guarantees[1].max_undetected must be >= 0, got -1",
        id="max-undetected-negative",
    ),
    case(
        edit(36, "  checkpoint_every: 0"),
        f"{F}:36:21: defense.checkpoint_every must be >= 1, got 0",
        id="checkpoint-every-0",
    ),
    case(
        edit(20, "    silent_corruption: 1.5"),
        f"{F}:20:24: adversary.faults.silent_corruption: probability 1.5 is not in [0, 1]",
        id="silent-corruption-1.5",
    ),
    case(
        edit(19, "    crash: 26"),
        f"{F}:19:12: adversary.faults.crash is 26 but there are only 25 workers",
        id="crash-too-many",
    ),
    # -- trust entries ------------------------------------------------------------------------
    case(
        edit(11, "  honest: [0, 4]"),
        f"{F}:11:15: trust.honest[1]: stage 4 does not exist (stages are 0 to 3)",
        id="honest-stage-out-of-range",
    ),
    case(
        edit(12, "  tee: [9]"),
        f"{F}:12:9: trust.tee[0]: stage 9 does not exist (stages are 0 to 3)",
        id="tee-stage-out-of-range",
    ),
    case(
        edit(11, '  honest: [0, "3:3"]'),
        f"{F}:11:15: trust.honest[1]: replica 3 does not exist (replicas are 0 to 2)",
        id="honest-replica-out-of-range",
    ),
    case(
        edit(11, '  honest: [0, "3-1"]'),
        f"{F}:11:15: trust.honest[1]: '3-1' is not a worker: write a stage index (3) or 'stage:replica' ('3:1')",
        id="malformed-worker",
    ),
    case(
        edit(11, '  honest: [0, "01:1"]'),
        f"{F}:11:15: trust.honest[1]: '01:1' is not a worker: write a stage index (3) or 'stage:replica' ('3:1')",
        id="worker-leading-zero",
    ),
    case(edit(11, "  honest: [0, -1]"), f"{F}:11:15: trust.honest[1]: a stage index must be >= 0", id="negative-stage"),
    case(
        edit(11, "  honest: [0, 0]"),
        f"{F}:11:15: trust.honest[1]: 0 is listed twice (first at index 0)",
        id="duplicate-honest-stage",
    ),
    case(
        edit(12, '  tee: ["1:0", "1:0"]'),
        f"{F}:12:16: trust.tee[1]: '1:0' is listed twice (first at index 0)",
        id="duplicate-tee-worker",
    ),
    case(
        edit(13, "  coordinator: trustd"),
        f"{F}:13:16: trust.coordinator: the string 'trustd' is not allowed (did you mean 'trusted'?); expected one of: trusted, untrusted",
        id="misspelt-coordinator",
    ),
    # -- adversary budget ---------------------------------------------------------------------
    case(
        edit(15, '  max_malicious: "10 percent"'),
        f"{F}:15:18: adversary.max_malicious: '10 percent' is not a budget: write a whole number (2) or a percentage ('10%')",
        id="budget-10-percent-words",
    ),
    case(
        edit(15, '  max_malicious: "150%"'),
        f"{F}:15:18: adversary.max_malicious: '150%' is more than 100%",
        id="budget-150-percent",
    ),
    case(
        edit(15, f"  max_malicious: {TOTAL_WORKERS + 1}"),
        f"{F}:15:18: adversary.max_malicious is 26 but the topology has only 25 workers (4 stages x 3 replicas x 2 copies + 1 standby)",
        id="budget-above-worker-count",
    ),
    case(
        edit(15, "  max_malicious: -1"),
        f"{F}:15:18: adversary.max_malicious must be >= 0, got -1",
        id="budget-negative",
    ),
    # -- duplicates and empty lists -------------------------------------------------------------
    case(
        edit(42, "  - id: integrity"),
        f"{F}:42:9: guarantee id 'integrity' is already used by guarantees[0]",
        id="duplicate-guarantee-id",
    ),
    case(
        edit(17, "  capabilities: [tamper_activations, tamper_activations]"),
        f"{F}:17:38: capability 'tamper_activations' is listed twice (first at index 0)",
        id="duplicate-capability",
    ),
    case(
        edit(35, "  response: [eject, eject]"),
        f"{F}:35:21: response 'eject' is listed twice (first at index 0)",
        id="duplicate-response",
    ),
    case(
        edit(40, "    of: [tamper_activations, tamper_activations]"),
        f"{F}:40:30: capability 'tamper_activations' is listed twice (first at index 0)",
        id="duplicate-of",
    ),
    case(
        edit(17, "  capabilities: []"), f"{F}:17:17: adversary.capabilities must not be empty", id="empty-capabilities"
    ),
    case(edit(37, "guarantees: []", through=48), f"{F}:37:13: guarantees must not be empty", id="empty-guarantees"),
    case(edit(35, "  response: []"), f"{F}:35:13: defense.response must not be empty", id="empty-response"),
    case(edit(40, "    of: []"), f"{F}:40:9: guarantees[0].of must not be empty", id="empty-of"),
    case(edit(2, 'name: ""'), f"{F}:2:7: name must not be empty", id="empty-name"),
    case(
        edit(38, "  - id: -bad"),
        f"{F}:38:9: guarantees[0].id: the string '-bad' is not a valid id (letters, digits, '_', '.', '-'; not starting with '.' or '-')",
        id="bad-guarantee-id",
    ),
    # -- misspelt enumeration values -----------------------------------------------------------
    case(
        edit(17, "  capabilities: [tamper_activation]"),
        f"{F}:17:18: adversary.capabilities[0]: the string 'tamper_activation' is not allowed (did you mean 'tamper_activations'?); expected one of: {CAPS}",
        id="misspelt-capability",
    ),
    case(
        edit(35, "  response: [skip-stage]"),
        f"{F}:35:14: defense.response[0]: the string 'skip-stage' is not allowed (did you mean 'skip_stage'?); expected one of: {RESPONSES}",
        id="misspelt-response",
    ),
    case(
        edit(26, "      input_via: upstraem"),
        f"{F}:26:18: defense.checks[0].input_via: the string 'upstraem' is not allowed (did you mean 'upstream'?); expected one of: coordinator, upstream, checked_worker",
        id="misspelt-input-via",
    ),
    case(
        edit(29, "      verifier: pear"),
        f"{F}:29:17: defense.checks[1].verifier: the string 'pear' is not allowed (did you mean 'peer'?); expected one of: coordinator, tee, peer",
        id="misspelt-verifier",
    ),
    case(
        edit(34, "      rule: meadian"),
        f"{F}:34:13: defense.checks[3].rule: the string 'meadian' is not allowed (did you mean 'median'?); expected one of: median, trimmed_mean, krum",
        id="misspelt-rule",
    ),
    case(
        edit(32, "      resolve: referree"),
        f"{F}:32:16: defense.checks[2].resolve: the string 'referree' is not allowed (did you mean 'referee'?); expected one of: majority, referee",
        id="misspelt-resolve",
    ),
    case(
        edit(17, "  capabilities: [fly]"),
        f"{F}:17:18: adversary.capabilities[0]: the string 'fly' is not allowed; expected one of: {CAPS}",
        id="unknown-capability-no-match",
    ),
    case(
        edit(25, "    - scheme: redundant_neighbor"),
        f"{F}:25:15: unknown check scheme 'redundant_neighbor' (did you mean 'redundant_neighbour'?); expected one of: {SCHEMES}",
        id="misspelt-scheme",
    ),
    case(
        edit(25, "    - scheme: magic"),
        f"{F}:25:15: unknown check scheme 'magic'; expected one of: {SCHEMES}",
        id="unknown-scheme",
    ),
    case(
        edit(39, "    kind: detecton"),
        f"{F}:39:11: unknown guarantee kind 'detecton' (did you mean 'detection'?); expected one of: {KINDS}",
        id="misspelt-kind",
    ),
    case(
        edit(39, "    kind: magic"),
        f"{F}:39:11: unknown guarantee kind 'magic'; expected one of: {KINDS}",
        id="unknown-kind",
    ),
    # -- missing keys -------------------------------------------------------------------------
    case(
        edit(25, "    - input_via: coordinator", through=26),
        f"{F}:25:7: missing required key 'scheme' in defense.checks[0]",
        id="missing-scheme",
    ),
    case(edit(39), f"{F}:38:5: missing required key 'kind' in guarantees[0]", id="missing-kind"),
    case(edit(1), f"{F}:1:1: missing required key 'version'", id="missing-version"),
    case(edit(2), f"{F}:1:1: missing required key 'name'", id="missing-name"),
    case(edit(4, through=9), f"{F}:1:1: missing required key 'topology'", id="missing-topology"),
    case(edit(5), f"{F}:4:1: missing required key 'stages' in topology", id="missing-stages"),
    case(edit(14, through=20), f"{F}:1:1: missing required key 'adversary'", id="missing-adversary"),
    case(edit(15), f"{F}:14:1: missing required key 'max_malicious' in adversary", id="missing-max-malicious"),
    case(edit(17), f"{F}:14:1: missing required key 'capabilities' in adversary", id="missing-capabilities"),
    case(edit(37, through=48), f"{F}:1:1: missing required key 'guarantees'", id="missing-guarantees"),
    case(edit(28), f"{F}:27:7: missing required key 'rate' in defense.checks[1]", id="missing-rate"),
    case(edit(31), f"{F}:30:7: missing required key 'factor' in defense.checks[2]", id="missing-factor"),
    case(edit(44), f"{F}:42:5: missing required key 'max_undetected' in guarantees[1]", id="missing-max-undetected"),
    case(
        "version: 1\n",
        f"{F}:1:1: missing required key 'name'",
        f"{F}:1:1: missing required key 'topology'",
        f"{F}:1:1: missing required key 'adversary'",
        f"{F}:1:1: missing required key 'guarantees'",
        id="only-version",
    ),
    # -- version ------------------------------------------------------------------------------
    case(
        edit(1, "version: 2"), f"{F}:1:10: unsupported spec version 2: this stagewarden reads version 1", id="version-2"
    ),
    case(
        edit(1, 'version: "1"'),
        f"{F}:1:10: unsupported spec version '1': this stagewarden reads version 1",
        id="version-string",
    ),
    case(
        edit(1, "version: true"),
        f"{F}:1:10: unsupported spec version true: this stagewarden reads version 1",
        id="version-bool",
    ),
    case(
        edit(1, "version: 1.0"),
        f"{F}:1:10: unsupported spec version 1.0: this stagewarden reads version 1",
        id="version-float",
    ),
    # -- whole-spec rules ---------------------------------------------------------------------
    case(
        edit(40, "    of: [tamper_activations, withhold]"),
        f"{F}:40:30: detection covers tampering capabilities (tamper_activations, tamper_gradients, tamper_weights, "
        "poison_data, equivocate); 'withhold' is not one",
        id="detection-of-withhold",
    ),
    case(
        edit(33, "    - scheme: redundant_neighbour", through=34),
        f"{F}:33:15: defense.checks[3]: only one 'redundant_neighbour' check is allowed (first at index 0)",
        id="two-redundant-neighbour-checks",
    ),
    case(
        edit(33, "    - scheme: replicate\n      factor: 3", through=34),
        f"{F}:33:15: defense.checks[3]: only one 'replicate' check is allowed (first at index 2)",
        id="two-replicate-checks",
    ),
    # -- documents that are not specs ----------------------------------------------------------
    case("", f"{F}:1:1: {EMPTY}", id="empty-file"),
    case("  \n\n   \n", f"{F}:1:1: {EMPTY}", id="whitespace-only"),
    case("# nothing but a comment\n", f"{F}:1:1: {EMPTY}", id="comment-only"),
    case(
        "- version: 1\n- name: x\n",
        f"{F}:1:1: the spec must be a mapping of keys to values, got a list",
        id="root-list",
    ),
    case("hello\n", f"{F}:1:1: the spec must be a mapping of keys to values, got the string 'hello'", id="root-scalar"),
    case(
        edit(17, "  capabilities: [tamper_activations"),
        f"{F}:18:9: YAML syntax error: expected ',' or ']', but got ':' (while parsing a flow sequence at line 17, column 17)",
        id="yaml-syntax-error",
    ),
    case(edit(6, "  stages: 5"), f"{F}:6:3: YAML syntax error: duplicate key 'stages'", id="duplicate-yaml-key"),
    case(
        edit(5, "\tstages: 4"),
        f"{F}:5:1: YAML syntax error: found character '\\t' that cannot start any token",
        id="tab-indentation",
    ),
    case(
        BASE.encode().replace(b"name: base", b"name: ba\x00se"),
        f"{F}:2:9: the file is binary (it contains a NUL byte), not a YAML or JSON spec",
        id="nul-byte",
    ),
    case(
        BASE.encode().replace(b"name: base", b"name: caf\xe9"),
        f"{F}:2:10: the file is not UTF-8 text",
        id="invalid-utf8",
    ),
    case(edit(5, "  stages: &four 4\n  replicas: *four", through=6), f"{F}:5:11: {ANCHORS}", id="scalar-anchor-alias"),
    case(
        edit(11, "  honest: &stages [0]\n  tee: *stages", through=12), f"{F}:11:11: {ANCHORS}", id="list-anchor-alias"
    ),
    case(
        edit(4, "topology:\n  <<: {stages: 4}", through=5),
        f"{F}:5:7: YAML merge keys (<<) are not allowed in a spec: write each key out",
        id="merge-key",
    ),
    case(
        edit(2, "name: !custom base"),
        f"{F}:2:7: YAML tags (!custom) are not allowed in a spec: write the plain value",
        id="custom-tag",
    ),
    case(
        edit(2, "name: !!str base"),
        f"{F}:2:7: YAML tags (!!str) are not allowed in a spec: write the plain value",
        id="core-tag",
    ),
    case(
        edit(5, "  stages: !!int four"),
        f"{F}:5:11: invalid YAML value: cannot read the value (invalid literal for int() with base 10: 'four')",
        id="bad-int-tag",
    ),
    case(
        edit(2, "name: 2024-13-45"),
        f"{F}:2:7: invalid YAML value: cannot read the value (month must be in 1..12)",
        id="impossible-date",
    ),
    case(
        edit(5, "  stages: " + "9" * 5000),
        f"{F}:5:11: invalid YAML value: the number has too many digits",
        id="too-many-digits",
    ),
    case(
        "description: " + "[" * 1000 + "]" * 1000 + "\n",
        f"{F}:1:46: the document is nested more than 32 levels deep",
        id="nested-1000-lists",
    ),
    case(
        "".join("  " * depth + f"k{depth}:\n" for depth in range(40)),
        f"{F}:33:65: the document is nested more than 32 levels deep",
        id="nested-40-mappings",
    ),
    case(
        "description: >\n: # a note\n  text\n\nname: x\n",
        f"{F}:2:3: YAML error: the YAML reader cannot handle the comment here (remove or move it)",
        id="comment-the-reader-cannot-place",
    ),
    case(BASE + "#" * (1 << 20), f"{F}:1:1: the spec is larger than 1048576 bytes", id="huge-input"),
    case(
        BASE + "---\n" + BASE,
        f"{F}:49:1: YAML syntax error: expected a single document in the stream, but found another document",
        id="two-documents",
    ),
    case(edit(3, "3: three"), f"{F}:3:1: mapping keys must be strings, got the integer 3", id="int-key"),
    case(edit(3, "null: nothing"), f"{F}:3:1: mapping keys must be strings, got null", id="null-key"),
    case(edit(3, "? [a, b]\n: c"), f"{F}:3:3: mapping keys must be strings, got a list", id="list-key"),
    case(
        '{"version": 1, "name": }',
        "spec.json:1:24: JSON syntax error: Expecting value",
        id="json-syntax-error",
        file="spec.json",
    ),
    case(
        '{\n  "version": 1,\n  "name": "x",\n}',
        "spec.json:4:1: JSON syntax error: Expecting property name enclosed in double quotes",
        id="json-trailing-comma",
        file="spec.json",
    ),
    case(
        '{"version": 1, "version": 1}',
        "spec.json:1:16: YAML syntax error: duplicate key 'version'",
        id="json-duplicate-key",
        file="spec.json",
    ),
    case(
        '{"version": 1, "name": "a\\ud800"}',
        "spec.json:1:24: the string holds a lone surrogate escape (\\ud800 to \\udfff), which is not a character",
        id="json-lone-surrogate",
        file="spec.json",
    ),
]


@pytest.mark.parametrize(("source", "file", "expected"), CASES)
def test_invalid_spec(source: str | bytes, file: str, expected: list[str]) -> None:
    """The loader rejects the document with exactly these diagnostics, in this order."""
    raw = source if isinstance(source, bytes) else source.encode("utf-8")
    with pytest.raises(SpecError) as info:
        load_bytes(raw, file)
    assert [str(d) for d in info.value.diagnostics] == expected
    assert str(info.value) == "\n".join(expected)
    assert str(info.value.first) == expected[0]


def test_case_count() -> None:
    """The table keeps at least 40 invalid specs (the issue's floor)."""
    assert len(CASES) >= 40


def test_base_is_valid() -> None:
    """The base every case edits loads without errors or warnings, so each case has one cause."""
    loaded = load_text(BASE, F)
    assert loaded.warnings == []
    assert loaded.spec.total_workers == TOTAL_WORKERS


def test_edit_replaces_lines() -> None:
    """``edit`` replaces, expands and deletes the named lines and nothing else."""
    assert edit(2, "name: other").splitlines()[1] == "name: other"
    assert edit(2, "a: 1\nb: 2").splitlines()[1:4] == ["a: 1", "b: 2", "description: a minimal valid spec"]
    assert edit(4, through=9).splitlines()[3] == "trust:"
    assert len(edit(1).splitlines()) == len(BASE_LINES) - 1


def test_file_on_disk_names_its_path(tmp_path: Path) -> None:
    """A spec loaded from disk names its path in every diagnostic."""
    path = tmp_path / "broken.yaml"
    path.write_text(edit(5, "  stages: 1"), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert str(info.value) == f"{path}:5:11: topology.stages must be >= 2, got 1"


def test_json_file_on_disk_locates_errors(tmp_path: Path) -> None:
    """A .json spec is read as JSON, and its diagnostics point into the JSON text."""
    data = {"version": 1, "name": "x", "topology": {"stages": 1}}
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    assert [str(d) for d in info.value.diagnostics] == [
        f"{path}:1:1: missing required key 'adversary'",
        f"{path}:1:1: missing required key 'guarantees'",
        f"{path}:5:15: topology.stages must be >= 2, got 1",
    ]


@pytest.mark.parametrize(
    ("make_target", "message"),
    [
        pytest.param(lambda p: p / "missing.yaml", "no such file", id="missing-file"),
        pytest.param(lambda p: p, "is a directory, not a spec file", id="directory"),
    ],
)
def test_unreadable_paths(tmp_path: Path, make_target: Callable[[Path], Path], message: str) -> None:
    """A missing file or a directory is a SpecError at line 1, column 1, not an OSError."""
    target = make_target(tmp_path)
    with pytest.raises(SpecError) as info:
        load_spec(target)
    assert str(info.value) == f"{target}:1:1: {message}"
