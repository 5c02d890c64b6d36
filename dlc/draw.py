"""Network diagrams: each model's inputs, layers (op, output shape,
parameter count) and outputs as a Graphviz DOT graph, rendered by the
`dot` program when it is installed.

The edges come from data flow: a layer is drawn fed by the nearest layers
or inputs upstream of it, through the ops that are no layer (adds,
broadcasts), so branches, concatenations and residuals show as they are.
"""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np

from .errors import DlcError


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def dot(source: str, file: str = "<source>") -> str:
    """The DOT text of every model of a program (its source and file name:
    the checked program, before any pass, holds each layer call's value)."""
    from . import frontend
    checked = frontend.parse_program(source, file)
    per_layer: dict[str, int] = {}
    for p in checked.params.values():
        per_layer[p.layer] = per_layer.get(p.layer, 0) + int(np.prod(p.type.shape, dtype=np.int64))
    lines = ["digraph dlc {", "  rankdir=TB;", '  node [fontname="Helvetica", fontsize=10];']
    for fn in checked.functions.values():
        if fn.kind != "model":
            continue
        m = fn.name
        lines += [f"  subgraph {_quote('cluster_' + m)} {{", f"    label={_quote('model ' + m)};"]
        # The nearest layers/inputs upstream of each value, as DOT node ids.
        sources: dict[int, frozenset[str]] = {}
        for v in fn.inputs:
            nid = f"{m}/input/{v.name}"
            sources[id(v)] = frozenset([nid])
            label = _quote(f"{v.name}\n{v.type}")
            lines.append(f"    {_quote(nid)} [shape=ellipse, label={label}];")
        edges: set[tuple[str, str]] = set()
        for node in fn.nodes:
            up = frozenset().union(*(sources.get(id(v), frozenset()) for v in node.inputs))
            layer = fn.layer_values.get(id(node.out))
            if layer is None:
                sources[id(node.out)] = up
                continue
            nid = f"{m}/{layer}"
            op = checked.layers[layer].op if layer in checked.layers else node.op.name
            count = per_layer.get(layer, 0)
            label = f"{layer}\n{op}\n{node.out.type}" + (f"\n{count:,} params" if count else "")
            lines.append(f"    {_quote(nid)} [shape=box, style=rounded, label={_quote(label)}];")
            edges |= {(u, nid) for u in up}
            sources[id(node.out)] = frozenset([nid])
        for name, v in fn.outputs.items():
            nid = f"{m}/output/{name}"
            label = _quote(f"output {name}\n{v.type}")
            lines.append(f"    {_quote(nid)} [shape=ellipse, style=bold, label={label}];")
            edges |= {(u, nid) for u in sources.get(id(v), frozenset())}
        lines += [f"    {_quote(a)} -> {_quote(b)};" for a, b in sorted(edges)]
        lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


def draw(source: str, file: str, path: str | os.PathLike | None = None, format: str | None = None) -> str:
    """The DOT text; with `path`, also written there: as DOT when `format`
    (default: the path's suffix) is 'dot' or 'gv', else rendered by
    Graphviz's `dot` (svg, png, pdf, ...), which must be installed."""
    text = dot(source, file)
    if path is None:
        return text
    fmt = (format or Path(path).suffix.lstrip(".") or "dot").lower()
    if fmt in ("dot", "gv"):
        Path(path).write_text(text)
        return text
    exe = shutil.which("dot")
    if exe is None:
        raise DlcError(f"drawing {fmt} needs Graphviz's `dot` program, which is not on PATH: install "
                       "graphviz (apt install graphviz, brew install graphviz, conda install "
                       "graphviz), or write the DOT text with format 'dot'")
    done = subprocess.run([exe, f"-T{fmt}", "-o", str(path)], input=text.encode(),
                          capture_output=True)
    if done.returncode:
        raise DlcError(f"dot -T{fmt} failed: {done.stderr.decode(errors='replace').strip()}")
    return text
