"""Attacks a malicious or faulty stage worker can mount: plans as data, pure tensor
transformations, and the behaviour a worker runs for a plan.

An :class:`AttackPlan` says who attacks (a set of stages, colluding or not), what they do
(an :class:`AttackKind`), from which step and how often. Whether the attack fires on a unit is
a deterministic function of the plan's seed and the unit, so every process (the attacker, the
verifier replaying a run, a test) agrees on which units were tampered. The transformations are
pure functions of the tensor, the plan and the unit; :class:`PlanAttack` decides where a worker
applies them:

* forward kinds act on a stage's output activation before it is sent, backward kinds on the
  gradient of the stage's input before it is sent back (one set of functions; the plan's
  :attr:`AttackPlan.direction` says which message they are applied to);
* ``weights`` acts on a stage's parameters after its real optimizer step;
* ``optimizer`` acts on a stage's optimizer state at the start of a step (between updates);
* ``grad_drift`` acts on a stage's accumulated parameter gradients between its backward units;
* ``swap_weights`` acts on a stage's weights at the start of a step (between updates);
* ``equivocate`` returns two tensors: one sent on, one committed in the receipt;
* ``poison_data`` acts on stage 0's token ids;
* ``false_accuse`` produces a forged accusation for the referee.

Randomness comes only from :mod:`stagewarden.runtime.seeding`; the global random state is
neither used nor changed. The package's modules: ``plan`` (the plan and its parsing), ``tamper`` (the transformations)
and ``behaviour`` (the worker's hooks).
"""

from __future__ import annotations

from stagewarden.runtime.attacks.behaviour import NoAttack, PlanAttack, make_attack
from stagewarden.runtime.attacks.plan import (
    ATTACK_KINDS,
    TENSOR_KINDS,
    AttackKind,
    AttackPlan,
    Direction,
    FiringUnit,
    describe_kinds,
)
from stagewarden.runtime.attacks.tamper import (
    Accusation,
    Equivocation,
    bitflip,
    bitflip_position,
    drift_direction,
    equivocate,
    false_accuse,
    lazy,
    poison_data,
    random_like,
    relative_noise,
    replay,
    reverse,
    scale,
    tamper_gradients,
    tamper_optimizer,
    tamper_tensor,
    tamper_weights,
)

__all__ = [
    "ATTACK_KINDS",
    "TENSOR_KINDS",
    "Accusation",
    "AttackKind",
    "AttackPlan",
    "Direction",
    "Equivocation",
    "FiringUnit",
    "NoAttack",
    "PlanAttack",
    "bitflip",
    "bitflip_position",
    "describe_kinds",
    "drift_direction",
    "equivocate",
    "false_accuse",
    "lazy",
    "make_attack",
    "poison_data",
    "random_like",
    "relative_noise",
    "replay",
    "reverse",
    "scale",
    "tamper_gradients",
    "tamper_optimizer",
    "tamper_tensor",
    "tamper_weights",
]
