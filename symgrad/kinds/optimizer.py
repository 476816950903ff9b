"""Optimizers: an update rule written once as SymPy statements, one fused in-place kernel.

A spec states, in torch.optim's order of operations,
* ``scalars``: per-step scalars (bias corrections, decayed learning rates) from the step count,
  the hyper-parameters and the flags; assigning to a ``ScalarState`` (NAdam's ``mu_product``)
  updates that state;
* ``update``: per-element statements over ``param``, ``grad`` and the state buffers; assigning to
  ``param`` or to a buffer writes it back in place.

The derivation turns that into kernels, knowing no optimizer by name:
1. Variants. A buffer that torch keeps only under a condition (``max_exp_avg_sq`` with amsgrad,
   SGD's ``momentum_buffer`` when momentum != 0) makes that condition a *switch*: every
   combination of switches gets its own kernel, with the rule specialised (its Piecewise
   collapsed) so that an absent buffer is never touched. Every other option (maximize, nesterov,
   decoupled weight decay, SGD's first step, RAdam's rectification) stays a Piecewise on a
   per-call scalar: the kernel receives it as a bool that no element changes.
2. Scalar hoisting. Every subexpression free of per-element values is computed once per call in
   float64 and rounded once to the arrays' dtype, as torch does with its Python scalars (so a
   float32 kernel never recomputes ``1 - beta2`` in float32).
3. Proofs. The kernel's statements (hoisted constants put back), run at 40 digits, equal the
   textbook rule the spec cites (``references``) at random points of every parameter's domain.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

import sympy as sp
from sympy.core.relational import Relational
from sympy.logic.boolalg import BooleanAtom, BooleanFunction

from symgrad.derive import DerivationError, Proof, Step
from symgrad.kinds import Kind, register_kind
from symgrad.printer import DTYPES, NumbaPrinter, print_expr
from symgrad.spec import OpSpec, Param, SpecError

PARAM = sp.Symbol("param", real=True)  # the parameter element, updated in place
GRAD = sp.Symbol("grad", real=True)  # its gradient element
STEP = sp.Symbol("step", integer=True, positive=True)  # 1 on the first update, as torch's step

# Names the template uses in kernels (i, n, a_<array>) and wrappers; specs may not take them.
_GENERATED_LOCALS = frozenset({"i", "n", "fn", "variant", "taken", "dt", "constants", "kernel",
                               "hyper", "state", "self", "np", "math", "numbers", "grads"})

Condition = sp.Basic  # a SymPy Boolean: a Flag's symbol, a relation on Params, And/Or/Not


def is_condition(expr: sp.Basic) -> bool:
    """A compound truth value (a Symbol is a Boolean to SymPy too, so test the node types)."""
    return isinstance(expr, Relational | BooleanFunction | BooleanAtom)


@dataclass(frozen=True)
class Flag:
    """A boolean option (``amsgrad``, ``maximize``): a SymPy Boolean symbol in the formulas."""

    name: str
    default: bool
    doc: str = ""

    @property
    def symbol(self) -> sp.Symbol:
        return sp.Symbol(self.name)


@dataclass(frozen=True)
class StateBuffer:
    """A per-element state array, named as in torch's ``optimizer.state[p]``.

    ``initial`` is its fill value (may use Params); ``exists`` is when torch keeps it.
    """

    name: str
    doc: str
    initial: sp.Expr = sp.S.Zero
    exists: Condition = sp.true

    @property
    def symbol(self) -> sp.Symbol:
        return sp.Symbol(self.name, real=True)


@dataclass(frozen=True)
class ScalarState:
    """A per-parameter scalar carried across steps, held in a 0-d array of ``dtype``.

    Its update (a statement in ``scalars``) is evaluated in that dtype, each operand rounded to it
    first, as a float32 torch tensor multiplied by a Python float is.
    """

    name: str
    doc: str
    initial: float
    dtype: str = "float32"

    @property
    def symbol(self) -> sp.Symbol:
        return sp.Symbol(self.name, real=True)


@dataclass(frozen=True)
class Reference:
    """A textbook form of the new value of ``target`` (in the old values), proven equal to what
    the kernel computes when the ``when`` symbols (flags, params, the step) take those values;
    the other symbols are drawn at random from their domains."""

    title: str
    target: str
    expr: sp.Expr
    when: tuple[tuple[sp.Basic, bool | float | int], ...] = ()


@dataclass(frozen=True)
class Optimizer(OpSpec):
    """An in-place update rule: ``scalars`` once per step, then ``update`` for every element."""

    class_name: str = ""  # the convenience class, e.g. "Adam"
    flags: tuple[Flag, ...] = ()
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()  # ("betas", ("beta1", "beta2"))
    buffers: tuple[StateBuffer, ...] = ()
    scalar_states: tuple[ScalarState, ...] = ()
    scalars: tuple[tuple[str, sp.Expr], ...] = ()
    update: tuple[tuple[str, sp.Expr], ...] = ()
    requires: tuple[tuple[Condition, str], ...] = ()  # (must hold, message)
    references: tuple[Reference, ...] = ()
    notation: tuple[tuple[str, str], ...] = ()  # name -> LaTeX, for `symgrad latex`

    kind: ClassVar[str] = "optimizer"

    def __post_init__(self) -> None:
        if self.family != "optimizer":
            raise SpecError(f"op {self.name!r}, field 'family': an Optimizer spec has family "
                            f"'optimizer', got {self.family!r}. Fix: pass family='optimizer'.")
        if not self.class_name.isidentifier():
            raise SpecError(f"op {self.name!r}, field 'class_name': {self.class_name!r} is not "
                            "an identifier. Fix: give the class name, e.g. 'Adam'.")
        if all(target != PARAM.name for target, _ in self.update):
            raise SpecError(f"op {self.name!r}, field 'update': no statement assigns 'param'. "
                            "Fix: end the rule with ('param', <new value>).")
        super().__post_init__()
        self._check_names()

    # -- the symbols each part may use ----------------------------------------------------------
    def flag_symbols(self) -> set[sp.Symbol]:
        return {f.symbol for f in self.flags}

    def scalar_symbols(self) -> set[sp.Symbol]:
        """Everything a per-step scalar may use (before the named scalars)."""
        return ({p.symbol for p in self.numeric_params} | self.flag_symbols() | {STEP}
                | {s.symbol for s in self.scalar_states})

    def element_symbols(self) -> set[sp.Symbol]:
        return {PARAM, GRAD} | {b.symbol for b in self.buffers}

    def allowed_symbols(self) -> set[sp.Symbol]:
        named = {sp.Symbol(n, real=True) for n, _ in (*self.scalars, *self.update)}
        return (super().allowed_symbols() | self.scalar_symbols() | self.element_symbols()
                | named)

    def formulas(self) -> dict[str, sp.Expr]:
        out: dict[str, sp.Expr] = {}
        for part, statements in (("scalars", self.scalars), ("update", self.update)):
            for n, (target, expr) in enumerate(statements):
                out[f"{part}[{n}] {target}"] = expr
        for buffer in self.buffers:
            out[f"buffers.{buffer.name}.initial"] = sp.sympify(buffer.initial)
        return out

    def _check_names(self) -> None:
        """Each statement uses only what is defined before it; names do not collide."""
        names = [p.name for p in self.params] + [f.name for f in self.flags]
        names += [b.name for b in self.buffers] + [s.name for s in self.scalar_states]
        names += [g for g, _ in self.groups] + [PARAM.name, GRAD.name, STEP.name]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SpecError(f"op {self.name!r}: name(s) {', '.join(dupes)} declared twice. "
                            "Fix: give every parameter, flag, buffer and state its own name.")
        clash = sorted(n for n in (*names, *(t for t, _ in (*self.scalars, *self.update)))
                       if n in _GENERATED_LOCALS or n.startswith(("a_", "_")))
        if clash:
            raise SpecError(f"op {self.name!r}: name(s) {', '.join(clash)} clash with the "
                            "generated code's own names (a_*, _*, i, n, fn, ...). Fix: rename.")
        known = {s.name for s in self.scalar_symbols()}
        states = {s.name for s in self.scalar_states}
        for target, expr in self.scalars:
            self._check_uses(f"scalars {target}", expr, known)
            if target in names and target not in states:
                raise SpecError(f"op {self.name!r}, field 'scalars': {target!r} would overwrite "
                                "a parameter. Fix: pick another name.")
            known.add(target)
        element = {s.name for s in self.element_symbols()}
        known |= element
        for target, expr in self.update:
            self._check_uses(f"update {target}", expr, known)
            if target in names and target not in element:
                raise SpecError(f"op {self.name!r}, field 'update': {target!r} is not a buffer, "
                                "'param' or 'grad'. Fix: name temporaries apart from parameters.")
            known.add(target)
        for group, members in self.groups:
            missing = [m for m in members if m not in {p.name for p in self.numeric_params}]
            if missing:
                raise SpecError(f"op {self.name!r}, field 'groups': {group} names unknown "
                                f"parameter(s) {missing}. Fix: declare them as Params.")

    def _check_uses(self, where: str, expr: sp.Expr, known: set[str]) -> None:
        unknown = sorted(s.name for s in expr.free_symbols if s.name not in known)
        if unknown:
            raise SpecError(f"op {self.name!r}, {where}: uses {', '.join(unknown)} before it is "
                            "defined. Fix: order the statements as torch computes them.")


# -- derivation ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One kernel: the switches' values, the specialised statements and their scalars."""

    bits: int
    switches: tuple[tuple[Condition, bool], ...]
    buffers: tuple[StateBuffer, ...]  # the buffers this variant reads or writes
    statements: tuple[tuple[str, sp.Expr], ...]  # hoisted: scalars appear as _k symbols
    constants: tuple[tuple[sp.Symbol, sp.Basic], ...]  # _k symbol -> per-call scalar expression
    reads: tuple[str, ...]  # element arrays loaded
    writes: tuple[str, ...]  # element arrays stored


@dataclass(frozen=True)
class OptimizerDerivation:
    spec: Optimizer
    switches: tuple[Condition, ...]
    variants: tuple[Variant, ...]
    steps: tuple[Step, ...]
    proofs: tuple[Proof, ...]
    backward_needs: str = "nothing: an optimizer has no backward; <op>_step updates in place"


class ScalarHoister:
    """Replaces every subexpression free of per-element symbols by a named per-call constant.

    In a product the scalar numerator and denominator are hoisted apart (``v/bc2`` keeps its
    division, as torch's ``exp_avg_sq.div(bias_correction2)``); lone symbols and numbers stay.
    """

    def __init__(self, element: set[sp.Symbol], prefix: str = "_k") -> None:
        self.element = element
        self.prefix = prefix
        self.constants: dict[sp.Basic, sp.Symbol] = {}

    def is_scalar(self, expr: sp.Basic) -> bool:
        return not (expr.free_symbols & self.element)

    def name(self, expr: sp.Basic) -> sp.Basic:
        if expr.is_Atom or isinstance(expr, BooleanAtom):
            return expr
        if expr not in self.constants:
            n = f"{self.prefix}{len(self.constants)}"
            self.constants[expr] = sp.Symbol(n) if is_condition(expr) else sp.Symbol(n, real=True)
        return self.constants[expr]

    def __call__(self, expr: sp.Basic) -> sp.Basic:
        if expr.is_Atom or isinstance(expr, BooleanAtom):
            return expr
        if self.is_scalar(expr):
            return self.name(expr)
        if isinstance(expr, sp.Piecewise):
            return sp.Piecewise(*[(self(v), self(c)) for v, c in expr.args])
        if isinstance(expr, sp.Add):
            fixed = [a for a in expr.args if self.is_scalar(a)]
            rest = [self(a) for a in expr.args if not self.is_scalar(a)]
            return sp.Add(*rest, *([self.name(sp.Add(*fixed))] if fixed else []))
        if isinstance(expr, sp.Mul):
            fixed = [a for a in expr.args if self.is_scalar(a)]
            rest = [self(a) for a in expr.args if not self.is_scalar(a)]
            denominators = [a for a in fixed if a.is_Pow and a.exp.is_negative]
            numerators = [a for a in fixed if a not in denominators]
            num = self.name(sp.Mul(*numerators))
            den = self.name(sp.Mul(*[1 / a for a in denominators]))
            return sp.Mul(num, *rest, sp.Pow(den, -1))
        return expr.func(*[self(a) for a in expr.args])


def _switches(spec: Optimizer) -> tuple[Condition, ...]:
    seen: list[Condition] = []
    for buffer in spec.buffers:
        if buffer.exists != sp.true and buffer.exists not in seen:
            seen.append(buffer.exists)
    return tuple(seen)


def _specialise(expr: sp.Basic, values: dict[Condition, bool]) -> sp.Basic:
    subs = {c: (sp.true if v else sp.false) for c, v in values.items()}
    return sp.piecewise_fold(expr.subs(subs)) if subs else expr


def _variant(spec: Optimizer, bits: int, switches: tuple[Condition, ...],
             hoister: ScalarHoister) -> Variant:
    values = {c: bool(bits >> n & 1) for n, c in enumerate(switches)}
    present = [b for b in spec.buffers if b.exists == sp.true or values[b.exists]]
    absent = {b.symbol for b in spec.buffers} - {b.symbol for b in present}
    statements: list[tuple[str, sp.Expr]] = []
    for target, expr in spec.update:
        special = _specialise(expr, values)
        if special == sp.Symbol(target, real=True):
            continue  # left as it is in this variant (an absent buffer, a skipped momentum)
        if special.free_symbols & absent or sp.Symbol(target, real=True) in absent:
            names = ", ".join(sorted(s.name for s in special.free_symbols & absent) or [target])
            raise DerivationError(
                f"{spec.name}: statement {target} still uses {names} when "
                f"{', '.join(f'{sp.sstr(c)}={v}' for c, v in values.items())}; make it a "
                "Piecewise on the buffer's `exists` condition")
        statements.append((target, special))
    hoisted = tuple((t, hoister(e)) for t, e in statements)
    used = set().union(*(e.free_symbols for _, e in hoisted))
    constants = tuple((sym, expr) for expr, sym in hoister.constants.items() if sym in used)
    element_names = [PARAM.name, GRAD.name, *(b.name for b in present)]
    assigned = {t for t, _ in statements}
    # An array is read if its element is used before (or without) being assigned.
    reads, defined = [], set()
    for target, expr in statements:
        for s in expr.free_symbols:
            if s.name in element_names and s.name not in defined and s.name not in reads:
                reads.append(s.name)
        defined.add(target)
    writes = [n for n in element_names if n in assigned and n != GRAD.name]
    lone = [s for s in sorted(used - set(hoister.constants.values()), key=str)
            if s.name not in element_names and s.name not in assigned]
    constants += tuple((s, s) for s in lone)  # a lone hyper-parameter is passed as it is
    return Variant(bits, tuple(values.items()), tuple(present), hoisted, constants,
                   tuple(n for n in element_names if n in reads),
                   tuple(writes))


def _sample(spec: Optimizer, rng: random.Random) -> dict[sp.Symbol, sp.Expr]:
    """A random point of the rule's domain: params inside their bounds, buffers positive."""

    def real(lo: float, hi: float) -> sp.Float:
        return sp.Float(rng.uniform(lo, hi), 40)

    point: dict[sp.Symbol, sp.Expr] = {STEP: sp.Integer(rng.randint(1, 30))}
    for p in spec.numeric_params:
        lo = p.minimum if p.minimum is not None else 0.0
        hi = p.maximum if p.maximum is not None else lo + 1.0
        point[p.symbol] = real(lo + (hi - lo) * 0.01, hi - (hi - lo) * 0.01)
    for s in spec.scalar_states:
        point[s.symbol] = real(0.1, 1.0)
    for b in spec.buffers:  # state buffers are positive in the rules' domains (sums of squares)
        point[b.symbol] = real(0.05, 2.0)
    point[PARAM] = real(-2, 2)
    point[GRAD] = real(-2, 2)
    return point


def _truth(value: bool | float | int) -> sp.Basic:
    return (sp.true if value else sp.false) if isinstance(value, bool) else sp.sympify(value)


def _prove_reference(spec: Optimizer, d_switches: tuple[Condition, ...],
                     variants: tuple[Variant, ...], ref: Reference, points: int = 30) -> Proof:
    """Run the kernel's statements (hoisted constants put back) at 40 digits against ``ref``."""
    fixed = {k: _truth(v) for k, v in ref.when}
    for f in spec.flags:
        fixed.setdefault(f.symbol, _truth(f.default))
    rng = random.Random(3)
    for _ in range(points):
        start: dict[sp.Basic, sp.Basic] = {**_sample(spec, rng), **fixed}
        env = dict(start)
        bits = sum(1 << n for n, c in enumerate(d_switches) if c.xreplace(env) == sp.true)
        variant = variants[bits]
        constants = {s: e for s, e in variant.constants}
        for target, expr in spec.scalars:
            env[sp.Symbol(target, real=True)] = expr.xreplace(env).evalf(40)
        for target, expr in variant.statements:
            env[sp.Symbol(target, real=True)] = expr.xreplace(constants).xreplace(env).evalf(40)
        want = complex(ref.expr.xreplace(start).evalf(40))
        got = complex(env[sp.Symbol(ref.target, real=True)])
        if not abs(want - got) <= 1e-25 * (1 + abs(want)):
            raise DerivationError(f"{spec.name}: {ref.title}: the kernel gives {got}, the "
                                  f"reference {want}")
    return Proof(rf"\text{{{_escape(ref.title)}}}",
                 f"kernel form at 40 digits, {points} random points of the domains")


def _escape(text: str) -> str:
    """Underscores as LaTeX text (flag and buffer names inside \\text{} and \\mathrm{})."""
    return text.replace("_", r"\_")


class _Latex:
    """LaTeX with the spec's notation (exp_avg -> m, param -> \\theta, ...)."""

    def __init__(self, spec: Optimizer, extra: dict[str, str] | None = None) -> None:
        self.names = {**dict(spec.notation), **(extra or {})}

    def symbol(self, name: str) -> str:
        if name in self.names:
            return self.names[name]
        return rf"\mathrm{{{_escape(name)}}}" if "_" in name else sp.latex(sp.Symbol(name))

    def expr(self, expr: sp.Basic) -> str:
        names = {s: self.symbol(s.name) for s in expr.free_symbols}
        return sp.latex(expr, symbol_names=names)

    def statement(self, target: str, expr: sp.Basic, arrow: str = r"\leftarrow") -> str:
        return rf"{self.symbol(target)} &{arrow} {self.expr(expr)}"

    def aligned(self, statements, arrow: str = r"\leftarrow") -> str:
        body = r" \\ ".join(self.statement(str(t), e, arrow) for t, e in statements)
        return r"\begin{aligned}" + body + r"\end{aligned}"


def _derive_optimizer(spec: Optimizer) -> OptimizerDerivation:
    switches = _switches(spec)
    element = spec.element_symbols() | {sp.Symbol(t, real=True) for t, _ in spec.update}
    hoister = ScalarHoister(element)
    variants = tuple(_variant(spec, bits, switches, hoister) for bits in range(2 ** len(switches)))
    proofs = [_prove_reference(spec, switches, variants, ref) for ref in spec.references]
    if not proofs:
        raise DerivationError(f"{spec.name}: give at least one Reference to prove the rule")

    tex = _Latex(spec)
    defaults = ", ".join(f"{tex.symbol(p.name)} = {p.default!r}" for p in spec.params)
    flags = ", ".join(rf"\text{{{_escape(f.name)}}} = \text{{{f.default}}}" for f in spec.flags)
    steps = [Step("Hyper-parameters (torch.optim defaults)",
                  ", ".join(filter(None, [defaults, flags])) or r"\text{none}")]
    if spec.scalars:
        steps.append(Step("Per-step scalars (bias corrections; t is the step, from 1)",
                          tex.aligned(spec.scalars, "=")))
    steps.append(Step("Update, per element, in torch's order", tex.aligned(spec.update)))
    for buffer in spec.buffers:
        if buffer.exists != sp.true:
            steps.append(Step(f"Variant switch: buffer {_escape(buffer.name)}",
                              rf"\text{{kept only when }} {tex.expr(buffer.exists)}"
                              r"\text{; one kernel per switch value}"))
    base = variants[0]
    kernel_tex = _Latex(spec, {s.name: rf"k_{{{s.name[2:]}}}" for s, e in base.constants
                               if s != e})
    hoisted = [(s.name, e) for s, e in base.constants if s != e]
    if hoisted:
        steps.append(Step("Kernel evaluates once per call (float64, rounded once to the dtype)",
                          kernel_tex.aligned(hoisted, "=")))
    steps.append(Step("Kernel evaluates per element (no switch on)",
                      kernel_tex.aligned(base.statements)))
    return OptimizerDerivation(spec, switches, variants, tuple(steps), tuple(proofs))


# -- template context ---------------------------------------------------------------------------


def _py(expr: sp.Basic) -> str:
    """Python source of a per-call scalar, evaluated in float64 (plain floats, math)."""
    return print_expr(expr, "float64")


def _param_entry(p: Param) -> dict:
    return {"name": p.name, "default_repr": repr(p.default), "doc": p.doc or p.name,
            "minimum": repr(p.minimum), "maximum": repr(p.maximum), "strict": repr(p.strict)}


def _state_update_lines(state: ScalarState, expr: sp.Expr) -> list[str]:
    """The update of a scalar state in its own dtype: every operand rounded to it first."""
    renamed = {s: sp.Symbol(f"_in_{s.name}", real=True) for s in expr.free_symbols}
    lines = [f"_in_{s.name} = _cast({s.name})" for s in sorted(expr.free_symbols, key=str)]
    lines.append(f"{state.name} = float(_cast({_py(expr.xreplace(renamed))}))")
    return lines


def _optimizer_context(d: OptimizerDerivation) -> dict:
    spec = d.spec
    used_params = set().union(*(e.free_symbols for _, e in (*spec.scalars, *spec.update)),
                              *(c.free_symbols for c, _ in spec.requires),
                              *(b.exists.free_symbols for b in spec.buffers))
    grouped = {m: g for g, members in spec.groups for m in members}
    step_params, class_only = [], []
    for p in spec.numeric_params:
        (step_params if p.symbol in used_params else class_only).append(_param_entry(p))
    for entry in (*step_params, *class_only):
        entry["group"] = grouped.get(entry["name"])
        if entry["group"]:
            members = dict(spec.groups)[entry["group"]]
            entry["label"] = f"{entry['group']}[{members.index(entry['name'])}]"
        else:
            entry["label"] = entry["name"]
    groups = [{"name": g, "members": list(members),
               "default_repr": repr(tuple(spec.param(m).default for m in members))}
              for g, members in spec.groups]
    state_names = {s.name for s in spec.scalar_states}
    scalar_lines: list[str] = []
    for target, expr in spec.scalars:
        if target in state_names:
            state = next(s for s in spec.scalar_states if s.name == target)
            scalar_lines.append(f"_cast = {target}_array.dtype.type")
            scalar_lines += _state_update_lines(state, expr)
            scalar_lines.append(f"{target}_array[...] = {target}")
        else:
            scalar_lines.append(f"{target} = {_py(expr)}")
    variants = []
    for v in d.variants:
        variants.append({
            "bits": v.bits,
            "when": ", ".join(f"{sp.sstr(c)} is {val}" for c, val in v.switches) or "always",
            "buffers": [{"name": b.name, "needed": "by every step" if b.exists == sp.true
                         else f"when {_py(b.exists)}"} for b in v.buffers],
            "call_arrays": ", ".join(f"{a}.reshape(-1)" for a in (
                PARAM.name, GRAD.name, *(b.name for b in v.buffers))),
            "constants": [{"name": s.name, "code": _py(e),
                           "boolean": is_condition(e) or e in spec.flag_symbols()}
                          for s, e in v.constants],
            "reads": list(v.reads), "writes": list(v.writes),
            "arrays": [PARAM.name, GRAD.name, *(b.name for b in v.buffers)],
            "kernel_args": ", ".join([*(f"a_{a}" for a in (PARAM.name, GRAD.name,
                                                           *(b.name for b in v.buffers))),
                                      *(s.name for s, _ in v.constants), "n"]),
            "body": {dt: _kernel_body(v, dt) for dt in DTYPES},
        })
    buffers = [{"name": b.name, "doc": b.doc, "initial": _py(sp.sympify(b.initial)),
                "exists": _py(b.exists) if b.exists != sp.true else "True",
                "conditional": b.exists != sp.true} for b in spec.buffers]
    states = [{"name": s.name, "doc": s.doc, "initial": repr(float(s.initial)), "dtype": s.dtype}
              for s in spec.scalar_states]
    hyper_args, step_sig = [], []
    for entry in step_params:
        if entry["group"] is None:
            hyper_args.append(entry["name"])
            step_sig.append(f"{entry['name']}={entry['default_repr']}")
        elif entry["group"] not in hyper_args:
            hyper_args.append(entry["group"])
            group = next(g for g in groups if g["name"] == entry["group"])
            step_sig.append(f"{entry['group']}={group['default_repr']}")
    hyper_args += [f.name for f in spec.flags]
    step_sig += [f"{f.name}={f.default!r}" for f in spec.flags]
    return {
        "step_params": step_params, "class_only": class_only, "groups": groups,
        "hyper_args": hyper_args, "step_sig": step_sig,
        "hyper_names": [e["name"] for e in step_params] + [f.name for f in spec.flags],
        "class_sig": step_sig + [f"{e['name']}={e['default_repr']}" for e in class_only],
        "class_attrs": hyper_args + [e["name"] for e in class_only],
        "flags": [{"name": f.name, "default_repr": repr(f.default), "doc": f.doc or f.name}
                  for f in spec.flags],
        "buffers": buffers, "states": states,
        "switches": [_py(c) for c in d.switches],
        "requires": [{"code": _py(c), "message": m} for c, m in spec.requires],
        "scalar_lines": scalar_lines,
        "variants": variants,
        "text": {"per_step": [f"{t} = {sp.sstr(e)}" for t, e in spec.scalars],
                 "per_element": [f"{t} <- {sp.sstr(e)}" for t, e in spec.update]},
        "class_name": spec.class_name,
        "class_call": ", ".join(
            ["param", "grad", *(f'state.get("{b.name}")' for b in spec.buffers),
             *(f'state["{s.name}"]' for s in spec.scalar_states), 'state["step"]',
             *(f"{a}=self.{a}" for a in hyper_args)]),
        "torch_name": spec.torch.function if spec.torch else "",
    }


def _kernel_body(v: Variant, dt: str) -> str:
    printer = NumbaPrinter(dt)
    lines = [f"{name} = a_{name}[i]" for name in v.reads]
    lines += [f"{t} = {printer.doprint(e)}" for t, e in v.statements]
    lines += [f"a_{name}[i] = {name}" for name in v.writes]
    return "\n".join(" " * 8 + line for line in lines)


def _exports(spec: OpSpec) -> list[str]:
    assert isinstance(spec, Optimizer)
    return [f"{spec.name}_step", spec.class_name]


register_kind(Kind(Optimizer, _derive_optimizer, "optimizer.py.j2", _optimizer_context,
                   exports=_exports))

__all__ = ["GRAD", "PARAM", "STEP", "Flag", "Optimizer", "Reference", "ScalarHoister",
           "ScalarState", "StateBuffer"]
