"""The loop IR printer (`--dump-ir-after`): no parentheses that precedence
makes redundant, the ones it needs kept, and an index's remainder as the
passes write it (a - (a / c) * c) printed as a % c."""
from dlc.ir import loops as L

I = lambda v: L.Const(v, L.INDEX)
p, t = L.Var("p"), L.Var("time")


def test_precedence_drops_redundant_parentheses_only():
    assert L.print_expr((p * 4 + 1) * 8) == "(p * 4 + 1) * 8"
    assert L.print_expr(p * 4 * 8 * 8) == "p * 4 * 8 * 8"
    assert L.print_expr(p - (t - 1)) == "p - (time - 1)"
    assert L.print_expr(p / (t * 2)) == "p / (time * 2)"
    assert L.print_expr(L.cmp("<", p + 1, t)) == "p + 1 < time"


def test_remainder_prints_as_percent():
    assert L.print_expr(p - (p / t) * t) == "p % time"
    assert L.print_expr((p - (p / t) * t) * 128 + 3) == "p % time * 128 + 3"
    # not a remainder: a different divisor
    assert L.print_expr(p - (p / t) * I(3)) == "p - p / time * 3"
