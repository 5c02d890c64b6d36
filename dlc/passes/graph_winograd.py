"""Winograd convolution: 3x3 convolutions of stride 1 (dilation 1, one
group, f32) become `winograd_conv2d` (dlc/ops/winograd.py), F(2x2, 3x3):
2.25x fewer multiplies than the direct convolution.

The pass runs after autodiff, on every entry: the forward values of a
train entry's convolutions come from Winograd too, while their gradients
were already built from conv2d's own rule (which reads conv2d's inputs and
the output gradient, never its output). It absorbs what `fuse` would have
fused into the convolution's kernel: the bias add (`add(y,
broadcast_to(reshape(bias)))`, as conv2d builds it) and a relu after it (or after the convolution),
each only where the value before it has no other reader and is not an
output or an assign (a train entry's relu reads its own output in the
backward pass, so it is absorbed there too); and, on the same terms, a 2x2
max pooling of stride 2 after them, whose windows are the Winograd tiles
(in a train entry the pooling's gradient reads its input: it stays). Nodes
left unused are dropped. The input gradient of such a convolution (with
padding at most 2: `conv2d_input_grad` of a zero-padded output gradient) is
a 3x3 convolution of stride 1 too, with the filters transposed and turned
(the op's `flip`): on the CIFAR CNN's 32- and 64-channel layers at batch
32 it replaces a direct product of 73 GFLOP/s per thread.

Where it pays (measured in-process against the direct convolution, conv +
bias + relu, 3x3 padding 1, 2 threads of the 2-core AMD Zen 4 with
AVX-512): with 32 and 64 channels and filters at 32x32 and 16x16, 1.4-1.7x
faster at batch 64 and 1.0-1.6x at batch 1; with 8 to 16 channels 1.1-1.5x;
with 4 channels or fewer from 0.7x (4 -> 16 at 16x16, batch 64) to 1.06x,
the per-tile transforms costing about what the products save. So the rule
is at least MIN_CHANNELS input channels and filters (16: a margin above the
measured 8) and outputs of at least MIN_CHUNK_TILES tiles per chunk. The
pass is for the cpu target (the driver runs it there only).
"""
from __future__ import annotations

from dataclasses import replace

from ..ir.graph import Function, Node, Program, Value
from ..ops.conv import CONV2D, CONV2D_INPUT_GRAD, PAD2D
from ..ops.elementwise import RELU
from ..ops.pool import MAXPOOL
from ..ops.shape import BROADCAST_TO, RESHAPE
from ..ops.winograd import CHUNK_BYTES, TILE_POOL, WINOGRAD_CONV2D, tiles
from .graph_chains import Build, bias_relu_chain, rewrite_chains, sole_reader_of
from .graph_dce import eliminate_dead_code

MIN_CHANNELS = 16
# Below this many tiles per chunk (outputs smaller than 8x8) the products are
# too narrow for the tile pass's vectors.
MIN_CHUNK_TILES = 16
# Output tiles per chunk; a chunk's transformed input and products (16 *
# (channels + filters) * tiles floats) fit CHUNK_BYTES where they can.
CHUNK_TILES = 64


def eligible(n: Node) -> bool:
    """A 3x3 convolution of stride 1, or the input gradient of one (whose
    output gradient comes zero-padded: `gpad`), wide enough to pay."""
    x, w = n.inputs
    a = n.attrs
    if n.op is CONV2D_INPUT_GRAD:
        padded = a["gpad"] is not None
    else:
        padded = n.op is CONV2D and a["padding"] == (0, 0)
    return (padded and a["kernel"] == (3, 3) and a["stride"] == (1, 1) and a["dilation"] == (1, 1)
            and a["groups"] == 1 and x.type.dtype == "f32"
            and x.type.shape[1] >= MIN_CHANNELS and n.out.type.shape[1] >= MIN_CHANNELS
            and _chunk_tiles(n) >= MIN_CHUNK_TILES)


def _chunk_tiles(n: Node) -> int:
    (oh, ow), (_, c, _, _), k = n.out.type.shape[2:], n.inputs[0].type.shape, n.out.type.shape[1]
    return chunk_rows(tiles(oh), tiles(ow), c, k) * tiles(ow)


def chunk_rows(th: int, tw: int, channels: int, filters: int) -> int:
    """Tile rows per chunk: a divisor of th within CHUNK_TILES tiles and
    CHUNK_BYTES; the most that leave at least two chunks per image (two
    tasks at batch 1) with MIN_CHUNK_TILES tiles, else the most."""
    fits = [r for r in range(1, th + 1) if th % r == 0 and r * tw <= max(CHUNK_TILES, tw)
            and 16 * (channels + filters) * r * tw * 4 <= CHUNK_BYTES]
    shared = [r for r in fits if th // r >= 2 and r * tw >= MIN_CHUNK_TILES]
    return max(shared or fits or [1])


def winograd(program: Program) -> Program:
    """Replace eligible convolutions (pure: returns a new program)."""
    out = replace(program, functions={})
    for fn in program.functions.values():
        out.functions[fn.name] = _function(fn)
    return eliminate_dead_code(out)


def _bias(v: Value, filters: int) -> Value | None:
    """b where v = broadcast_to(reshape(b, (filters, 1, 1))), b of [filters]."""
    if v.node is None or v.node.op is not BROADCAST_TO:
        return None
    r = v.node.inputs[0]
    if r.node is None or r.node.op is not RESHAPE or r.type.shape != (filters, 1, 1):
        return None
    b = r.node.inputs[0]
    return b if b.type.shape == (filters,) else None


def _function(fn: Function) -> Function:
    sole_reader = sole_reader_of(fn)
    plans: dict[int, Build] = {}   # id(last node of a replaced chain) -> its replacement's builder
    absorbed: set[int] = set()
    for n in fn.nodes:
        if n.op not in (CONV2D, CONV2D_INPUT_GRAD) or not eligible(n):
            continue
        if n.op is CONV2D_INPUT_GRAD:   # nothing to absorb: relu's gradient reads the forward output
            plans[id(n)] = lambda m, n=n: _replacement(m(n.inputs[0]), m(n.inputs[1]), None, False, False, n)
            continue
        chain, bias = bias_relu_chain(n, sole_reader, lambda v, n=n: _bias(v, n.out.type.shape[1]))
        relu = chain[-1].op is RELU
        pool = sole_reader(chain[-1].out, MAXPOOL)
        if pool is not None and pool.attrs == TILE_POOL:
            chain.append(pool)
        plans[id(chain[-1])] = lambda m, n=n, bias=bias, relu=relu, pool=chain[-1].op is MAXPOOL: \
            _replacement(m(n.inputs[0]), m(n.inputs[1]), None if bias is None else m(bias), relu, pool, n)
        absorbed.update(id(c) for c in chain[:-1])
    return rewrite_chains(fn, plans, absorbed)


def _replacement(x: Value, w: Value, bias: Value | None, relu: bool, pool: bool, conv: Node) -> Node:
    """winograd_conv2d in place of conv (+ bias, relu, pool), or of a
    convolution's input gradient."""
    filters, (oh, ow) = conv.out.type.shape[1], conv.out.type.shape[2:]
    th, tw = tiles(oh), tiles(ow)
    # conv2d's own zero padding folds into the staged rows (a pad2d that other
    # nodes read, the weight gradient in training, stays for them).
    padding = (0, 0)
    if x.node is not None and x.node.op is PAD2D:
        x, padding = x.node.inputs[0], x.node.attrs["padding"]
    attrs = {"padding": padding, "size": (oh, ow), "relu": relu, "pool": pool,
             "rows": chunk_rows(th, tw, x.type.shape[1], filters), "flip": conv.op is CONV2D_INPUT_GRAD}
    ins = (x, w) + ((bias,) if bias is not None else ())
    return Node(WINOGRAD_CONV2D, ins, attrs, WINOGRAD_CONV2D.infer([v.type for v in ins], attrs), conv.span)
