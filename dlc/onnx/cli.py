"""`dlc export` and `dlc import` (their arguments are parsed in dlc/cli.py)."""
from __future__ import annotations

import sys
from pathlib import Path


def export_command(args) -> int:
    from .. import api
    from ..cli import only
    from .export import export_model
    prog = api.compile(args.file, seed=args.seed)
    model = only(prog, "model", args.model, "model", "--model")
    if args.weights:
        prog.load(args.weights)
    export_model(prog, model, args.output)
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


def import_command(args) -> int:
    from .importer import import_model, save_safetensors
    out = Path(args.output)
    source, weights = import_model(args.file, model=args.model or out.stem, loss=args.loss,
                                   optimizer=args.optimizer)
    out.write_text(source)
    save_safetensors(weights, out.with_suffix(".safetensors"))
    print(f"wrote {out}, {out.with_suffix('.safetensors')}", file=sys.stderr)
    return 0
