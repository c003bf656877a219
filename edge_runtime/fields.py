"""One way to declare a field of a contract: its kind, default, bounds or choices, and doc.

The daemon's config sections (config.py), the manifest a device trusts (manifest.py) and a training
recipe (train/models.py) declare their fields with ``spec`` and check values with ``check``; each
caller turns a ``FieldError`` into its own error type (ConfigError, ManifestError, ValueError), so
a wrong value reads the same wherever it was written.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, Field, dataclass, field, fields


class FieldError(ValueError):
    """One value that breaks its field's declaration; the message names the value and the rule."""


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


# kind -> (accepts the value, what a wrong value should have been, the value as stored)
KINDS = {
    "bool": (lambda v: isinstance(v, bool), "bool", lambda v: v),
    "int": (_is_int, "int", lambda v: v),
    "float": (_is_num, "float", float),
    "str": (lambda v: isinstance(v, str), "a string", lambda v: v),
    "strs": (lambda v: isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v), "a list of strings",
             tuple),
    "dict": (lambda v: isinstance(v, dict), "an object", lambda v: v),
    "shape": (lambda v: isinstance(v, (list, tuple)) and all(_is_int(d) for d in v), "a list of integers",
              lambda v: v),
    "sha256": (lambda v: isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v),
               "64 hex digits", lambda v: v),
    "bytes": (lambda v: _is_int(v) and v >= 0, "a byte count", lambda v: v),
}


@dataclass(frozen=True)
class Spec:
    """What one field accepts. Bounds are [lo, hi]; an ``open_`` end excludes it, ``zero_ok`` also
    admits 0 ("the default" or "off"); ``whole_floats`` takes 10.0 for an int field (numbers from JSON
    or a command line). ``None`` passes when ``optional``."""
    kind: str
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False
    zero_ok: bool = False
    choices: tuple | None = None
    optional: bool = False
    whole_floats: bool = False
    doc: str = ""

    def check(self, value, where: str):
        """``value`` as stored (an int field's 10.0 -> 10, a float field's 1 -> 1.0, a list -> tuple for
        strs), or FieldError naming ``where``."""
        if value is None and self.optional:
            return None
        accepts, what, store = KINDS[self.kind]
        if self.kind == "int" and self.whole_floats and isinstance(value, float) and value.is_integer():
            value = int(value)
        if not accepts(value):
            raise FieldError(f"{where} = {value!r:.80} should be {what}")
        try:
            value = store(value)
        except OverflowError:  # an integer beyond any float, from JSON or a command line
            raise FieldError(f"{where} = {value!r:.80} is out of range") from None
        if self.choices is not None and value not in self.choices:
            raise FieldError(f"{where} = {value!r} must be one of {', '.join(map(str, self.choices))}")
        if self.lo is None and self.hi is None or (self.zero_ok and value == 0):
            return self._finite(value, where)
        lo = -math.inf if self.lo is None else self.lo
        hi = math.inf if self.hi is None else self.hi
        above = value > lo if self.open_lo else value >= lo
        below = value < hi if self.open_hi else value <= hi
        if above and below:  # both false for NaN
            return self._finite(value, where)
        span = f"{'(' if self.open_lo else '['}{lo}, {hi}{')' if self.open_hi else ']'}"
        raise FieldError(f"{where} = {value!r} must be {'0 (the default) or ' if self.zero_ok else ''}in {span}")

    def _finite(self, value, where: str):
        """A float field holds a number: NaN and infinity are refused even where no bound is declared."""
        if self.kind == "float" and not math.isfinite(value):
            raise FieldError(f"{where} = {value!r} must be a finite number")
        return value


def _kind_of(default) -> str:
    for kind, t in (("bool", bool), ("int", int), ("float", float), ("strs", tuple), ("str", str), ("dict", dict)):
        if isinstance(default, t):
            return kind
    raise TypeError(f"give spec(kind=...) for a default of type {type(default).__name__}")


def spec(default=MISSING, lo=None, hi=None, *, kind: str | None = None, choices=None, open_lo=False,
         open_hi=False, zero_ok=False, whole_floats=False, doc: str = "", default_factory=MISSING) -> Field:
    """A dataclass field carrying its Spec. The kind follows the default's type unless given; a
    ``None`` default makes the field optional."""
    sample = default_factory() if default_factory is not MISSING else default
    if kind is None:
        kind = _kind_of(sample)
    if kind not in KINDS:
        raise ValueError(f"unknown field kind {kind!r} (known: {', '.join(KINDS)})")
    s = Spec(kind, lo, hi, open_lo, open_hi, zero_ok, tuple(choices) if choices is not None else None,
             optional=sample is None, whole_floats=whole_floats, doc=doc)
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata={"spec": s})
    return field(default=default, metadata={"spec": s})


def spec_of(f: Field) -> Spec | None:
    """The field's Spec; a field declared without ``spec`` is checked by its default's type alone
    (None when it has no default, or None: such a field needs ``spec(kind=...)``)."""
    s = f.metadata.get("spec")
    if s is None:
        default = f.default_factory() if f.default is MISSING and f.default_factory is not MISSING else f.default
        s = Spec(_kind_of(default)) if default is not MISSING and default is not None else None
    return s


def checked(obj_or_cls, values: dict, where=lambda name: name) -> dict:
    """``values`` with every key that has a declared Spec checked and stored as declared."""
    out = dict(values)
    for f in fields(obj_or_cls):
        s = spec_of(f)
        if s is not None and f.name in out:
            out[f.name] = s.check(out[f.name], where(f.name))
    return out
