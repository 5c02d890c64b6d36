"""Source text to AST: the Lark parser for grammar/dl.lark, and syntax errors
in words.

Tokens (after the newline postlexer below) are fed one by one to Lark's
LALR parser and kept, so when the parser rejects a token we know every token
before it: the previous token, and which brackets and blocks are open.
`_syntax_error` classifies the rejection from the expected terminals and that
context into a message such as "expected ')' or ',' after argument"; users
never see terminal names.

Recovery: inside a block, the parser state is saved at each statement start.
After an error the parser goes back to that state and skips to the end of
the bad statement (its newline, or the block's '}'), so the syntax errors of
independent statements are all reported; an error outside a statement, or a
bad character, ends the parse.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from lark import Lark, Token, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedToken
from lark.visitors import Transformer_NonRecursive

from ..errors import CompileError, Diagnostic, Span
from ..ops.base import suggest
from . import ast
from .check import MAX_ERRORS

# Installed, the grammar ships inside the package (dlc/grammar/); in a source
# checkout it is the top-level grammar/.
_PACKAGE = Path(__file__).resolve().parents[1]
GRAMMAR = next((p for p in (_PACKAGE / "grammar" / "dl.lark", _PACKAGE.parent / "grammar" / "dl.lark")
                if p.is_file()), _PACKAGE.parent / "grammar" / "dl.lark")

EXPR_START = {"NAME", "INT", "FLOAT", "STRING", "LPAR", "MINUS", "TRUE", "FALSE"}
STMT_START = {"INPUT", "OUTPUT", "LOSS", "OPTIMIZER"}
KEYWORDS = {"MODEL", "TRAIN", "INPUT", "OUTPUT", "LOSS", "OPTIMIZER", "ON", "TRUE", "FALSE"}
OPERATORS = {"PLUS", "MINUS", "STAR", "SLASH", "DOT"}
OPENERS = {"LPAR": "RPAR", "LSQB": "RSQB", "LBRACE": "RBRACE"}
CLOSERS = {v: k for k, v in OPENERS.items()}
WORDS = {"NAME": "a name", "INT": "an integer", "FLOAT": "a number", "STRING": "a string",
         "_NL": "end of line", "$END": "end of file"}


class _Newlines:
    """Postlexer: a newline ends a statement, except inside ( ) or [ ] and
    before a line that starts with `|>`, which continues a pipeline. Braces
    only delimit blocks, so they reset the count of open brackets: an
    unclosed '(' can't swallow the next block."""
    always_accept = ("_NL",)

    def process(self, stream):
        depth, pending = 0, None
        for tok in stream:
            if tok.type == "_NL":
                if depth == 0 and pending is None:
                    pending = tok
                continue
            if pending is not None and tok.type != "_PIPE":
                yield pending
            pending = None
            if tok.type in ("LPAR", "LSQB"):
                depth += 1
            elif tok.type in ("RPAR", "RSQB") and depth:
                depth -= 1
            elif tok.type in ("LBRACE", "RBRACE"):
                depth = 0
            yield tok
        if pending is not None:
            yield pending


@functools.cache
def _lark() -> Lark:
    # cache: Lark keeps the LALR tables in a temporary file named by the
    # grammar's hash (a damaged one is rebuilt): each new process, a `dlc`
    # command, starts 0.3 s sooner.
    return Lark(GRAMMAR.read_text(), parser="lalr", lexer="basic", strict=True, cache=True,
                propagate_positions=True, maybe_placeholders=False, postlex=_Newlines())


def parse(source: str, file: str = "<source>") -> ast.Module:
    """Parse `source` into an AST; raise CompileError listing its syntax errors."""
    ip = _lark().parse_interactive(source)
    stream = ip.lexer_thread.lex(ip.parser_state)
    seen: list[Token] = []      # the tokens the parser accepted, for context
    errors: list[Diagnostic] = []
    checkpoint = None           # (parser, len(seen)) at the current statement's start
    skipping = False
    try:
        for tok in stream:
            if skipping:
                if tok.type == "_NL":
                    skipping = False
                    continue
                if tok.type != "RBRACE":
                    continue
                skipping = False
            try:
                ip.feed_token(tok)
            except UnexpectedToken as e:
                errors.append(_syntax_error(e, seen, file))
                if checkpoint is None or len(errors) >= MAX_ERRORS:
                    break
                ip, n = checkpoint[0].copy(deepcopy_values=False), checkpoint[1]
                del seen[n:]
                skipping = tok.type != "_NL"
                if tok.type == "RBRACE":   # the bad statement ends here: close the block
                    skipping = False
                    try:
                        ip.feed_token(tok)
                    except UnexpectedToken:
                        break
                    seen.append(tok)
                    checkpoint = None
                continue
            seen.append(tok)
            if tok.type == "RBRACE":
                checkpoint = None
            elif tok.type in ("_NL", "LBRACE") and "INPUT" in ip.choices():
                checkpoint = (ip.copy(deepcopy_values=False), len(seen))
        else:
            if not errors:
                tree = ip.feed_eof(seen[-1] if seen else None)
    except UnexpectedCharacters as e:
        errors.append(_bad_character(e, source, file))
    except UnexpectedToken as e:       # at the end of the file
        errors.append(_syntax_error(e, seen, file))
    if errors:
        raise CompileError(errors, source) from None
    return _ToAst(file).transform(tree)


# ------------------------------------------------------------- syntax errors

def _bad_character(e: UnexpectedCharacters, source: str, file: str) -> Diagnostic:
    c = source[e.pos_in_stream]
    if c == '"':
        msg = 'unterminated string: a string needs its closing \'"\' on the same line'
    elif c == "'":
        msg = "strings are written in double quotes, as in name=\"fc1\""
    elif c == "|":
        msg = "unexpected character '|' (did you mean '|>'?)"
    else:
        msg = f"unexpected character {c!r}"
    return Diagnostic(Span(file, e.line, e.column, e.line, e.column + 1), msg)


def _word(terminal: str) -> str:
    if terminal in WORDS:
        return WORDS[terminal]
    return f"'{_lark().get_terminal(terminal).pattern.value}'"


def _words(terminals) -> str:
    ws = sorted({_word(t) for t in terminals})
    return ws[0] if len(ws) == 1 else ", ".join(ws[:-1]) + " or " + ws[-1]


def _got(tok: Token) -> str:
    return WORDS[tok.type] if tok.type in ("_NL", "$END") else f"'{tok.value}'"


def _span(file: str, tok: Token) -> Span:
    return Span(file, tok.line, tok.column, tok.end_line, tok.end_column)


def _after(file: str, tok: Token) -> Span:
    return Span(file, tok.end_line, tok.end_column, tok.end_line, tok.end_column + 1)


def _open_brackets(tokens: list[Token]) -> list[int]:
    """Indices of the brackets still open after `tokens` (which the parser
    accepted, so they nest properly)."""
    stack: list[int] = []
    for i, t in enumerate(tokens):
        if t.type in OPENERS:
            stack.append(i)
        elif t.type in CLOSERS and stack:
            stack.pop()
    return stack


def _syntax_error(e: UnexpectedToken, before: list[Token], file: str) -> Diagnostic:
    tok, expected = e.token, set(e.expected)
    real = [t for t in before if t.type != "_NL"]
    opens = _open_brackets(before)

    if tok.type == "$END":
        where = _after(file, real[-1]) if real else Span(file, 1, 1)
        if not opens:
            return Diagnostic(where, f"unexpected end of file: expected {_words(expected)}")
        i = opens[-1]
        o = before[i]
        what = f"'{before[i - 2].value} {before[i - 1].value}'" if o.type == "LBRACE" else f"'{o.value}'"
        closer = _word(OPENERS[o.type])
        return Diagnostic(where, f"unexpected end of file: {closer} missing to close "
                                 f"{what} opened at line {o.line}")
    if tok.type in KEYWORDS and "NAME" in expected and tok.type not in expected:
        return Diagnostic(_span(file, tok), f"'{tok.value}' is a keyword and can't be used as a name")
    if tok.type in CLOSERS and tok.type not in expected:
        o = before[opens[-1]] if opens else None
        if o is None or (o.type == "LBRACE" and tok.type != "RBRACE"):
            return Diagnostic(_span(file, tok), f"unmatched '{tok.value}'")
        if OPENERS[o.type] != tok.type:
            return Diagnostic(_span(file, tok), f"'{tok.value}' does not match '{o.value}' "
                                                f"opened at line {o.line}, column {o.column}")

    prev = before[-1] if before else None
    message = _expected_message(tok, expected, before, opens)
    if prev is not None and (tok.type == "_NL" or tok.line > prev.end_line) and prev.type != "_NL":
        # The offending token is on a later line: what is missing belongs
        # right after the previous token, where rustc and clang point too.
        return Diagnostic(_after(file, prev), message)
    return Diagnostic(_span(file, tok), message)


def _expected_message(tok: Token, expected: set[str], before: list[Token], opens: list[int]) -> str:
    prev = before[-1] if before else None
    p = f"'{prev.value}'" if prev is not None else ""
    got = _got(tok)
    if expected & STMT_START:
        if tok.type in OPERATORS | {"_PIPE"} and prev is not None and prev.type == "_NL":
            return (f"a line can't start with '{tok.value}'; to continue an expression on the "
                    f"next line, wrap it in parentheses")
        return f"expected a statement (input, output, loss, optimizer or 'name = ...') or '}}', got {got}"
    if expected <= {"MODEL", "TRAIN", "$END", "_NL"}:
        return (f"expected 'model' or 'train' at the top level, got {got}"
                f"{suggest(tok.value, ['model', 'train'])}")
    if expected == {"NAME"}:
        return {
            "COLON": "expected a type such as f32[batch, 2] after ':'",
            "DOT": "expected an output name after '.'",
            "_PIPE": "expected an op or model after '|>', as in 'x |> relu'",
            "ON": "expected a model name after 'on'",
            "EQUAL": "expected an optimizer such as sgd(lr=0.1) after 'optimizer ='",
        }.get(prev.type, f"expected a name after {p}")
    if expected == {"COLON"}:
        return "'input' declarations need a type such as f32[batch, 2]"
    if expected == {"LSQB"}:
        return "a type needs its dims in brackets, such as f32[batch, 2] (f32[] for a scalar)"
    if expected == {"LBRACE"}:
        return f"expected '{{' after '{before[-2].value} {prev.value}'"
    if expected == {"EQUAL"}:
        if tok.type == "LPAR" and len(before) > 1 and before[-2].type in ("_NL", "LBRACE"):
            return (f"expected '=' after {p}: a statement binds a name, "
                    f"as in 'h = {prev.value}(...)'")
        if tok.type == "NAME":   # `inpt x: ...`: a misspelt keyword?
            return f"expected '=' after {p}{suggest(prev.value, ['input', 'output'])}"
        return f"expected '=' after {p}"
    if expected == {"LPAR"}:
        return f"expected '(' after {p}"
    if expected == {"INT", "NAME", "RSQB"}:
        return f"expected a dim (an integer or a symbol such as batch) or ']', got {got}"
    if expected == {"INT", "NAME"}:
        return f"expected a dim (an integer or a symbol such as batch) after ',', got {got}"
    if expected == {"COMMA", "RSQB"}:
        return f"expected ',' or ']' after a dim, got {got}"
    if expected >= EXPR_START:
        if "RPAR" in expected:
            return f"expected an argument or ')' after {p}, got {got}"
        return f"expected an expression after {p}, got {got}"
    if "_PIPE" in expected:
        if opens and before[opens[-1]].type == "LPAR":
            i = opens[-1]
            if i > 0 and before[i - 1].type == "NAME":
                return f"expected ')' or ',' after argument, got {got}"
            return f"expected ')' or ',', got {got}"
        hint = " (a missing '|>' or operator?)" if tok.type in ("NAME", "INT", "FLOAT", "LPAR") else ""
        return f"expected end of line after the expression, got {got}{hint}"
    if "ON" in expected:
        return f"expected end of line or 'on' and model names after the optimizer, got {got}"
    return f"expected {_words(expected)}, got {got}"


# ------------------------------------------------------------- tree to AST

@dataclass(frozen=True)
class _SliceItem:
    """A slice until its subscript makes it an ast.Slice."""
    bounds: tuple
    span: Span


@v_args(meta=True)
class _ToAst(Transformer_NonRecursive):
    """Lark tree to `ast` nodes. Pure: it never raises on user input.
    Non-recursive: a tree is as deep as the nesting of the source."""

    def __init__(self, file: str):
        super().__init__()
        self.file = file

    def _tok(self, t: Token) -> Span:
        return _span(self.file, t)

    def _meta(self, m) -> Span:
        return Span(self.file, m.line, m.column, m.end_line, m.end_column)

    def _keyword(self, m, word: str) -> Span:
        return Span(self.file, m.line, m.column, m.line, m.column + len(word))

    @staticmethod
    def _split(args) -> tuple[tuple, tuple]:
        return (tuple(a for a in args if not isinstance(a, ast.Keyword)),
                tuple(a for a in args if isinstance(a, ast.Keyword)))

    def start(self, m, blocks):
        return ast.Module(self.file, tuple(blocks))

    def model(self, m, c):
        return ast.Block(self._tok(c[0]), "model", str(c[0]), c[1])

    def train(self, m, c):
        return ast.Block(self._tok(c[0]), "train", str(c[0]), c[1])

    def body(self, m, stmts):
        return tuple(stmts)

    def input(self, m, c):
        return ast.Input(self._tok(c[0]), str(c[0]), c[1])

    def type(self, m, c):
        return ast.TypeExpr(self._tok(c[0]), str(c[0]), tuple(c[1:]))

    def fixed_dim(self, m, c):
        return ast.Dim(self._tok(c[0]), int(c[0]))

    def symbol_dim(self, m, c):
        return ast.Dim(self._tok(c[0]), str(c[0]))

    def let(self, m, c):
        return ast.Let(self._tok(c[0]), str(c[0]), c[1])

    def output(self, m, c):
        return ast.Output(self._tok(c[0]), str(c[0]), c[1])

    def loss(self, m, c):
        return ast.Loss(self._keyword(m, "loss"), c[0])

    def optimizer(self, m, c):
        kind, rest = c[0], c[1:]
        on = tuple(ast.Name(self._tok(t), str(t)) for t in rest if isinstance(t, Token))
        args, kwargs = self._split([a for a in rest if not isinstance(a, Token)])
        return ast.Optimizer(self._keyword(m, "optimizer"),
                             ast.Call(self._tok(kind), str(kind), args, kwargs), on)

    def pipe(self, m, c):
        lhs, f, rest = c[0], c[1], c[2:]
        args, kwargs = self._split(rest)
        span = Span(self.file, f.line, f.column, m.end_line, m.end_column)
        return ast.Call(span, str(f), (lhs, *args), kwargs)

    def call(self, m, c):
        args, kwargs = self._split(c[1:])
        return ast.Call(self._meta(m), str(c[0]), args, kwargs)

    def kwarg(self, m, c):
        return ast.Keyword(self._meta(m), str(c[0]), c[1])

    def binop(self, m, c):
        return ast.BinOp(self._tok(c[1]), str(c[1]), c[0], c[2])

    def neg(self, m, c):
        return ast.Neg(self._tok(c[0]), c[1])

    def field(self, m, c):
        return ast.Field(self._tok(c[1]), c[0], str(c[1]))

    def subscript(self, m, c):
        items = tuple(ast.Slice(i.span, *i.bounds) if isinstance(i, _SliceItem) else i for i in c[1:])
        return ast.Subscript(self._meta(m), c[0], items)

    def slice_both(self, m, c):
        return _SliceItem((c[0], c[1]), self._meta(m))

    def slice_from(self, m, c):
        return _SliceItem((c[0], None), self._meta(m))

    def slice_to(self, m, c):
        return _SliceItem((None, c[0]), self._meta(m))

    def slice_all(self, m, c):
        return _SliceItem((None, None), self._meta(m))

    def name(self, m, c):
        return ast.Name(self._tok(c[0]), str(c[0]))

    def int(self, m, c):
        return ast.Number(self._tok(c[0]), int(c[0]))

    def float(self, m, c):
        return ast.Number(self._tok(c[0]), float(c[0]))

    def string(self, m, c):
        return ast.String(self._tok(c[0]), str(c[0])[1:-1])

    def true(self, m, c):
        return ast.Bool(self._tok(c[0]), True)

    def false(self, m, c):
        return ast.Bool(self._tok(c[0]), False)

    def tuple(self, m, items):
        return ast.Tuple(self._meta(m), tuple(items))
