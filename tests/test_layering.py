"""The layering the layout promises, checked on the sources (lazy imports
inside functions count too): the IR knows no op, and the op modules that
gradient rules share import one way only."""
import ast
from pathlib import Path

DLC = Path(__file__).resolve().parents[1] / "dlc"


def imported(path: Path) -> set[str]:
    """Every module path.py imports, absolute (dlc.x.y), wherever the import is."""
    package = "dlc." + ".".join(path.relative_to(DLC).parent.parts)
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rstrip(".").split(".")
            base = base[:len(base) - node.level + 1] if node.level else []
            names.add(".".join(base + ([node.module] if node.module else [])))
    return names


def test_ir_imports_no_ops():
    for path in (DLC / "ir").glob("*.py"):
        assert not {m for m in imported(path) if m.startswith("dlc.ops")}, path.name


def test_shape_ops_do_not_import_elementwise():
    assert "dlc.ops.elementwise" not in imported(DLC / "ops" / "shape.py")
    assert "dlc.ops.shape" in imported(DLC / "ops" / "elementwise.py")
