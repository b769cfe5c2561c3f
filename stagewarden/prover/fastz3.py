"""Fast builders for Z3 Boolean terms.

``z3.And``/``z3.Or`` coerce and sort-check every argument in Python, which dominates the cost
of building encodings with hundreds of thousands of terms. These builders call the C API
directly on arguments that are Boolean terms of the main context, and fold Python ``True`` /
``False`` (a :data:`Term`) before anything reaches Z3.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TypeAlias

import z3
from z3 import z3core

_CTX = z3.main_ctx()

#: A Boolean term: a Z3 Boolean expression or a Python constant.
Term: TypeAlias = z3.BoolRef | bool


def _array(items: Sequence[z3.BoolRef]) -> object:
    arr = (z3core.Ast * len(items))()
    for i, a in enumerate(items):
        arr[i] = a.ast
    return arr


def _mk(fn: Callable[..., object], items: list[z3.BoolRef]) -> z3.BoolRef:
    return z3.BoolRef(fn(_CTX.ctx, len(items), _array(items)), _CTX)


def conj(args: Iterable[Term]) -> Term:
    """Conjunction; Python constants are folded (True when empty)."""
    items: list[z3.BoolRef] = []
    for a in args:
        if a is False:
            return False
        if a is not True:
            items.append(a)
    if not items:
        return True
    if len(items) == 1:
        return items[0]
    return _mk(z3core.Z3_mk_and, items)


def disj(args: Iterable[Term]) -> Term:
    """Disjunction; Python constants are folded (False when empty)."""
    items: list[z3.BoolRef] = []
    for a in args:
        if a is True:
            return True
        if a is not False:
            items.append(a)
    if not items:
        return False
    if len(items) == 1:
        return items[0]
    return _mk(z3core.Z3_mk_or, items)


def neg(a: Term) -> Term:
    """Negation, folding constants."""
    if a is True:
        return False
    if a is False:
        return True
    return z3.BoolRef(z3core.Z3_mk_not(_CTX.ctx, a.ast), _CTX)


def to_z3(a: Term) -> z3.BoolRef:
    """A Z3 expression for a term."""
    if isinstance(a, bool):
        return z3.BoolVal(a)
    return a


class ModelView:
    """A model whose answers are remembered per term: evaluating a term costs tens of
    microseconds, and a counterexample over many workers asks about the same terms again and
    again (the terms are kept alive here, so that Z3 cannot reuse their ids)."""

    def __init__(self, model: z3.ModelRef) -> None:
        self.model = model
        self._known: dict[int, tuple[bool, z3.BoolRef]] = {}

    def holds(self, a: Term) -> bool:
        """Whether ``a`` is true in the model (unassigned variables count as false)."""
        if isinstance(a, bool):
            return a
        key = z3core.Z3_get_ast_id(_CTX.ctx, a.ast)
        known = self._known.get(key)
        if known is None:
            known = self._known[key] = (bool(z3.is_true(self.model.eval(a, model_completion=True))), a)
        return known[0]


def holds_in(model: z3.ModelRef | ModelView, a: Term) -> bool:
    """Whether a term is true in a model (unassigned variables count as false)."""
    if isinstance(a, bool):
        return a
    if isinstance(model, ModelView):
        return model.holds(a)
    return bool(z3.is_true(model.eval(a, model_completion=True)))


def at_most(args: Sequence[z3.BoolRef], k: int) -> z3.BoolRef:
    """Cardinality constraint: at most ``k`` of the Boolean terms hold (built through the C API)."""
    return z3.BoolRef(z3core.Z3_mk_atmost(_CTX.ctx, len(args), _array(args), k), _CTX)


def at_least(args: Sequence[z3.BoolRef], k: int) -> z3.BoolRef:
    """Cardinality constraint: at least ``k`` of the Boolean terms hold (built through the C API)."""
    return z3.BoolRef(z3core.Z3_mk_atleast(_CTX.ctx, len(args), _array(args), k), _CTX)


_BOOL_SORT = z3.BoolSort(_CTX)


def boolean(name: str) -> z3.BoolRef:
    """A fresh Boolean constant (built through the C API: ``z3.Bool`` costs tens of
    microseconds a call in Python)."""
    symbol = z3core.Z3_mk_string_symbol(_CTX.ctx, name)
    return z3.BoolRef(z3core.Z3_mk_const(_CTX.ctx, symbol, _BOOL_SORT.ast), _CTX)


def implies(a: Term, b: Term) -> Term:
    """``a -> b``, folding constants."""
    return disj([neg(a), b])


def true_constants(model: z3.ModelRef) -> set[str]:
    """Names of the Boolean constants that ``model`` assigns true (one pass over the model
    through the C API: evaluating thousands of constants one by one is slow in Python)."""
    ctx, ref = model.ctx.ref(), model.model
    out: set[str] = set()
    for i in range(z3core.Z3_model_get_num_consts(ctx, ref)):
        decl = z3core.Z3_model_get_const_decl(ctx, ref, i)
        value = z3core.Z3_model_get_const_interp(ctx, ref, decl)
        if value and z3core.Z3_get_bool_value(ctx, value) == 1:
            out.add(z3core.Z3_get_symbol_string(ctx, z3core.Z3_get_decl_name(ctx, decl)))
    return out


def constant_name(var: z3.BoolRef) -> str:
    """The name of a constant (``str`` on a Z3 term runs its pretty printer, far slower)."""
    decl = z3core.Z3_get_app_decl(_CTX.ctx, var.as_ast())
    return str(z3core.Z3_get_symbol_string(_CTX.ctx, z3core.Z3_get_decl_name(_CTX.ctx, decl)))
