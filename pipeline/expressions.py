"""Band expressions: a tiny, safe language for per-pixel conditions such as ``ndwi > 0``.

A *band expression* is a condition on each pixel of a survey, written over its bands by name.
It is parsed with :mod:`ast` and checked node by node (:func:`parse_expression`), never
``eval``'d, so a label expression cannot run code:

- names: the survey's band names (``red``, ``nir``), ``b1``..``bN`` (bands by 1-based number,
  as GDAL counts them), and the indices ``ndvi`` and ``ndwi`` (:data:`pipeline.bands.INDICES`);
- numbers, ``+ - * /``, unary ``-``, ``abs(x)``, parentheses;
- comparisons ``< <= > >= == !=`` (chains like ``0 < ndvi < 0.3`` work);
- ``and``, ``or``, ``not`` (or ``&``, ``|``, ``~``).

Band values are the raw pixel values (digital numbers, as stored), so ``nir < 60`` means what
it says on a uint8 survey. The expression must be a condition (a comparison or a logical
combination of comparisons). :func:`evaluate_expression` computes it over pixel arrays.

Numbers must be finite (``1e309`` is infinity in floating point and is refused), and a division
by a constant zero is refused. A pixel where a division's divisor is zero (``red / green`` where
green is 0) has no value there: it satisfies no comparison (rather than being ±infinity, which
would satisfy every ``>`` or ``<``).
"""

from __future__ import annotations

import ast

import numpy as np

from pipeline.bands import INDICES, normalized_difference
from pipeline.errors import InputError

__all__ = ["parse_expression", "evaluate_expression"]

_COMPARE = {
    ast.Lt: np.less,
    ast.LtE: np.less_equal,
    ast.Gt: np.greater,
    ast.GtE: np.greater_equal,
    ast.Eq: np.equal,
    ast.NotEq: np.not_equal,
}
_ARITHMETIC = {ast.Add: np.add, ast.Sub: np.subtract, ast.Mult: np.multiply, ast.Div: np.divide}
_LOGICAL = {ast.BitAnd: np.logical_and, ast.BitOr: np.logical_or}
_FUNCTIONS = {"abs": np.abs}


def _names_in(tree: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not _is_function_name(tree, n)}


def _is_function_name(tree: ast.AST, name: ast.Name) -> bool:
    return any(isinstance(n, ast.Call) and n.func is name for n in ast.walk(tree))


def _describe(node: ast.AST) -> str:
    operators = {ast.Pow: "**", ast.Mod: "%", ast.FloorDiv: "//", ast.MatMult: "@", ast.BitXor: "^", ast.LShift: "<<", ast.RShift: ">>"}
    if type(node) in operators:
        return operators[type(node)]
    try:
        return ast.unparse(node) or type(node).__name__
    except Exception:  # noqa: BLE001 - some nodes have no source form
        return type(node).__name__


def parse_expression(expr: str, band_names: tuple[str, ...] | list[str], survey_id: str = "the survey") -> ast.Expression:
    """Parse and check a band expression (language: module docstring); InputError if it is unusable."""
    allowed_names = set(band_names) | {f"b{i + 1}" for i in range(len(band_names))}
    allowed_names |= {k for k, (a, b) in INDICES.items() if a in band_names and b in band_names}
    help_names = ", ".join(sorted(allowed_names))
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        raise InputError(f"band expression {expr!r} is not valid ({exc.msg}); write e.g. 'ndwi > 0'") from None
    for node in ast.walk(tree):
        ok = isinstance(
            node,
            (ast.Expression, ast.Compare, ast.BoolOp, ast.And, ast.Or, ast.BinOp, ast.UnaryOp, ast.Name, ast.Load, ast.Call),
        ) or type(node) in _COMPARE or type(node) in _ARITHMETIC or type(node) in _LOGICAL
        ok |= isinstance(node, (ast.USub, ast.UAdd, ast.Not, ast.Invert))
        ok |= isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool)
        if isinstance(node, ast.Call):
            ok = isinstance(node.func, ast.Name) and node.func.id in _FUNCTIONS and len(node.args) == 1 and not node.keywords
        if not ok:
            raise InputError(
                f"band expression {expr!r} uses {_describe(node)!r}, "
                f"which the expression language does not allow; use band names ({help_names}), numbers, "
                f"+ - * /, abs(), comparisons and and/or/not"
            )
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and not np.isfinite(node.value):
            raise InputError(
                f"band expression {expr!r} has the number {ast.get_source_segment(expr.strip(), node) or node.value}, "
                f"which is too large to be a finite number (it would be infinity, true or false for every "
                f"pixel); use a threshold within the pixel values' range"
            )
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and _constant_value(node.right) == 0:
            raise InputError(
                f"band expression {expr!r} divides by zero ({_describe(node)}), which is infinite or undefined "
                f"for every pixel; divide by a band or a non-zero number"
            )
    unknown = sorted(_names_in(tree) - allowed_names)
    if unknown:
        missing_index = [n for n in unknown if n in INDICES]
        extra = (
            f" ({', '.join(missing_index)} need{'s' if len(missing_index) == 1 else ''} bands "
            f"{' and '.join(sorted({b for n in missing_index for b in INDICES[n]}))})"
            if missing_index
            else ""
        )
        raise InputError(
            f"band expression {expr!r} names {', '.join(unknown)}, which {survey_id} does not have"
            f"{extra}; it has bands {list(band_names)}, so the expression may use {help_names}"
        )
    body = tree.body
    is_condition = isinstance(body, (ast.Compare, ast.BoolOp)) or (
        isinstance(body, ast.UnaryOp) and isinstance(body.op, (ast.Not, ast.Invert))
    ) or (isinstance(body, ast.BinOp) and type(body.op) in _LOGICAL)
    if not is_condition:
        raise InputError(
            f"band expression {expr!r} is a value, not a condition; compare it with a threshold, "
            f"e.g. '{expr.strip()} > 0'"
        )
    return tree


def _constant_value(node: ast.AST) -> float | None:
    """The value of a sub-expression made of numbers only (``2 - 2``), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _constant_value(node.operand)
        return None if v is None else (-v if isinstance(node.op, ast.USub) else v)
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        a, b = _constant_value(node.left), _constant_value(node.right)
        if a is None or b is None or (isinstance(node.op, ast.Div) and b == 0):
            return None
        with np.errstate(all="ignore"):
            return float(_ARITHMETIC[type(node.op)](a, b))
    return None


def _divide(a, b):
    """``a / b``, NaN (no value) where ``b`` is 0: such a pixel satisfies no comparison."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.asarray(b) == 0, np.nan, np.true_divide(a, b))


def evaluate_expression(tree: ast.Expression, bands: dict[str, np.ndarray]) -> np.ndarray:
    """Evaluate a parsed expression over pixel arrays ``bands`` (name → array, float); returns bool."""
    cache: dict[str, np.ndarray] = {}

    def name(n: str) -> np.ndarray:
        if n not in cache:
            if n in bands:
                cache[n] = bands[n]
            elif n in INDICES:
                a, b = (bands[k] for k in INDICES[n])
                cache[n] = normalized_difference(a, b)
            else:  # b1..bN
                cache[n] = bands[f"b{int(n[1:])}"]
        return cache[n]

    def ev(node: ast.AST):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            return name(node.id)
        if isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Div):
                return _divide(ev(node.left), ev(node.right))
            op = _ARITHMETIC.get(type(node.op)) or _LOGICAL[type(node.op)]
            return op(ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp):
            value = ev(node.operand)
            if isinstance(node.op, (ast.Not, ast.Invert)):
                return np.logical_not(value)
            return -value if isinstance(node.op, ast.USub) else value
        if isinstance(node, ast.BoolOp):
            op = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
            result = ev(node.values[0])
            for v in node.values[1:]:
                result = op(result, ev(v))
            return result
        if isinstance(node, ast.Compare):
            left, result = ev(node.left), None
            for op, right_node in zip(node.ops, node.comparators):
                right = ev(right_node)
                part = _COMPARE[type(op)](left, right)
                result = part if result is None else np.logical_and(result, part)
                left = right
            return result
        if isinstance(node, ast.Call):
            return _FUNCTIONS[node.func.id](ev(node.args[0]))
        raise AssertionError(f"unchecked node {node!r}")  # parse_expression refuses these

    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(ev(tree), dtype=bool)
