"""Fuzzing `adl check`: Hypothesis strategies for .adl texts, and how an outcome is judged.

Shared by tests/dsl/test_fuzz.py and bench/fuzz.py.

Two families:

* `grammar_specs` builds a spec from dsl/grammar.lark's rules with the real vocabulary: the
  blocks, the settings each block's schema knows (TASKS, DATA_SOURCES, MODEL_FAMILIES,
  TARGET_OPTIONS, the cost models'), pass and option names from the pass registry, units and
  constraints. Each value is drawn for its option's kind and is usually valid, so that many
  specs get through to the later checks; now and then it is hostile (huge, non-finite, deeply
  nested, of the wrong kind, odd unicode), and now and then a block is missing, doubled or
  garbage is inserted.
* `mutated_specs` takes the example specs and damages them: characters and tokens inserted,
  deleted or replaced, lines duplicated, dropped or swapped, the text cut short.

`specs` draws from both; `spec_files` are their bytes, now and then damaged past UTF-8.
`check_file` runs ``adl check`` in-process on one file and `judge_check` says whether what it
printed and returned keeps the contract (exit 0, or exit 2 with `file:line:col: error:` or
`file: error:` messages on one screen; never an internal error, a traceback or an exception).

Not a test module (no `test_` prefix, not on sys.path): load it by path.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from hypothesis import strategies as st

from adl.driver.check import DATA_SOURCES, MODEL_FAMILIES, TARGET_OPTIONS, TASKS, CostModelCalls
from adl.dsl.errors import printable
from adl.dsl.parser import BLOCK_KEYWORDS
from adl.ir.options import UNITS, Option
from adl.ir.passes import default_registry
from adl.ir.spec import BUDGET_QUANTITIES

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = tuple(sorted((ROOT / "examples").glob("*.adl")))

SMALL_SPEC = """spec s
task classify { classes = 10 }
data digits { split = 0.8  seed = 0 }
model cnn(channels = [16, 32], kernel = 3)
target host { kind = llvm  cores = 2  cost = roofline(gflops = 10, overhead = 4 us) }
constraints { latency <= 0.2 ms  size <= 64 KB  accuracy >= 90 %  params <= 40 K }
pipeline { train(epochs = 2) { optimizer = sgd(lr = 0.1) }  amc { flops = 50 % }  haq(bits = 2..8)  lower }
"""

# numbers as written: ordinary ones, the edges of bounds, past int and float limits, non-finite
NUMBER_TEXTS = (
    "0",
    "1",
    "2",
    "3",
    "-1",
    "10",
    "64",
    "0.5",
    ".5",
    "1.0",
    "1e-3",
    "-0.0",
    "2147483647",
    "2147483648",
    "4294967295",
    "4294967296",
    "18446744073709551616",
    "100000000000000000000000000000",
    "1e308",
    "1.7976931348623157e308",
    "1e309",
    "1e999",
    "-1e999",
    "1e-999",
    "9" * 400,
    "1" + "0" * 5000,
    "0" * 5000 + "1",
)
UNIT_TEXTS = tuple(UNITS)
GARBAGE = (
    "\x00",
    "\ufeff",
    "\u2028",
    "\x0c",
    "\r",
    "\t",
    "\x1b",
    "²",
    "٣",
    "é",
    "𝟘",
    "\\",
    '"',
    "#",
    "$",
    "{",
    "}",
    "[",
    "]",
    "(",
    ")",
    ",",
    "=",
    "..",
    "<=",
    ">",
    "%",
    "\n",
    " ",
    "[[[[",
    "))))",
    '"\\',
    "# {",
)
HOSTILE_STRINGS = (
    '"h:\u00b2"',
    '"h:9190"',
    '"127.0.0.1:65536"',
    '":1"',
    '"a\\"b"',
    '"no/such.npz"',
    '""',
    '"' + "x" * 300 + '"',
    '"a\\n\\tb"',
    '"\x1b[31m"',
    '"a\x00b"',
    '"../../../../etc"',
    '"[bold]"',
)
QUANTITY_UNITS = {
    "time": ("ns", "us", "ms", "s"),
    "bytes": ("B", "KB", "MB", "KiB", "MiB"),
    "fraction": ("%",),
    "flops": ("FLOPs", "KFLOPs", "MFLOPs"),
    "count": ("K", "M"),
}

_IDENTIFIERS = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,10}", fullmatch=True)
_HOSTILE_NUMBERS = st.sampled_from(NUMBER_TEXTS) | st.integers(-(2**70), 2**70).map(str)
# nesting around the limit (32), and far past it, where a recursive tree walk overflows the stack
deep_values = st.builds(
    lambda depth, brackets, leaf: brackets[0] * depth + leaf + brackets[1] * depth,
    st.sampled_from((33, 64, 1000, 3000)) | st.integers(28, 40),
    st.sampled_from((("[", "]"), ("f(x = ", ")"))),
    st.sampled_from(("1", "x")),
)


DOMAIN_CALLS = ("uniform", "loguniform", "int", "choice")  # search domains (adl.ir.domains)


def rarely(draw, one_in: int) -> bool:
    """True once in `one_in` draws; the usual case is the simple one Hypothesis starts from and shrinks to."""
    return draw(st.integers(1, one_in)) == one_in


def _list(items: Sequence[str]) -> str:
    return "[" + ", ".join(items) + "]"


def _call(name: str, args: Sequence[tuple[str, str]]) -> str:
    return name + "(" + ", ".join(f"{k} = {v}" for k, v in args) + ")"


@functools.lru_cache(maxsize=1)
def vocabulary() -> dict[str, tuple[str, ...]]:
    """The names the language knows: pass names, every setting name, callees and choices."""
    passes = tuple(default_registry())
    settings = {o.name for table in (TASKS, DATA_SOURCES, MODEL_FAMILIES) for schema in table.values() for o in schema}
    settings |= {o.name for o in TARGET_OPTIONS} | {o.name for p in passes for o in p.options}
    callees = {name for p in passes for o in p.options if o.calls for name in o.calls}
    choices = {c for p in passes for o in p.options for c in o.choices}
    return {
        "passes": tuple(p.name for p in passes),
        "settings": tuple(sorted(settings)),
        "callees": tuple(sorted(callees | set(CostModelCalls()) | {"mobilenet", "cells"})),
        "choices": tuple(sorted(choices | {"true", "false", "llvm", "host"})),
        "words": tuple(sorted(settings | callees | choices | set(BLOCK_KEYWORDS) | {p.name for p in passes})),
    }


names = st.one_of(st.deferred(lambda: st.sampled_from(vocabulary()["words"])), _IDENTIFIERS)

# -- values ------------------------------------------------------------------------------------


@st.composite
def hostile_values(draw, depth: int = 0) -> str:
    """Anything a value may be written as, mostly wrong: extreme numbers, odd strings, nesting."""
    choice = draw(st.integers(0, 7 if depth < 2 else 4))
    if choice == 0:
        return draw(_HOSTILE_NUMBERS)
    if choice == 1:
        return f"{draw(_HOSTILE_NUMBERS)} {draw(st.sampled_from(UNIT_TEXTS))}"
    if choice == 2:
        return draw(st.sampled_from(HOSTILE_STRINGS))
    if choice == 3:
        return draw(names)
    if choice == 4:
        return f"{draw(st.sampled_from(NUMBER_TEXTS[:14]))}..{draw(st.sampled_from(NUMBER_TEXTS[:14]))}"
    if choice == 5:
        return _list(draw(st.lists(hostile_values(depth + 1), max_size=3)))
    if choice == 6:
        args = draw(st.lists(st.tuples(names, hostile_values(depth + 1)), max_size=2))
        positional = draw(st.lists(hostile_values(depth + 1), max_size=2))
        callee = draw(st.sampled_from(DOMAIN_CALLS) | names)
        return callee + "(" + ", ".join([*positional, *(f"{k} = {v}" for k, v in args)]) + ")"
    return draw(deep_values if rarely(draw, 3) else _IDENTIFIERS)


def _number_in(low: float | None, high: float | None, integer: bool) -> st.SearchStrategy[str]:
    low = 0 if low is None else low
    high = low + 1000 if high is None else min(high, low + 1000)
    if integer:
        return st.integers(int(low), int(high)).map(str)
    return st.floats(low, high, allow_nan=False).map(lambda x: f"{x:.6g}")


def _quantity(kind: str, low: float | None, high: float | None) -> st.SearchStrategy[str]:
    """A number with a unit of `kind`, small enough for most bounds."""
    if kind == "fraction":
        return st.sampled_from(("0.5", "0.25", "50 %", "3 %", "0", "1", "100 %"))
    plain = (st.integers(0, 999).map(str),) if kind == "count" else ()
    return st.one_of(
        *plain, st.builds(lambda n, u: f"{n} {u}", st.integers(0, 999), st.sampled_from(QUANTITY_UNITS[kind]))
    )


@functools.lru_cache(maxsize=None)
def _valid_value(opt: Option) -> st.SearchStrategy[str]:
    """A value of `opt`'s kind, usually within its bounds."""
    kind = opt.kind
    if kind in ("int", "float"):
        return _number_in(opt.low, opt.high, kind == "int")
    if kind in QUANTITY_UNITS:
        return _quantity(kind, opt.low, opt.high)
    if kind == "int_list":
        return st.lists(_number_in(opt.low, opt.high, True), min_size=1, max_size=4).map(_list)
    if kind == "name_list":
        return st.lists(st.sampled_from(opt.choices), min_size=1, max_size=4, unique=True).map(_list)
    if kind == "int_range":
        bounds = _number_in(opt.low, opt.high, True).map(int)
        return st.tuples(bounds, bounds).map(lambda ab: f"{min(ab)}..{max(ab)}")
    if kind == "name":
        return st.sampled_from(opt.choices) if opt.choices else names
    if kind == "bool":
        return st.sampled_from(("true", "false"))
    if kind == "call":
        return st.sampled_from(sorted(opt.calls)).flatmap(lambda callee: _calls(callee, tuple(opt.calls[callee])))
    if kind == "path":
        return st.sampled_from(('"data.npz"', '"."', '"examples"'))
    return st.sampled_from(('"x"', '"znver3"', '"aarch64-linux-gnu"', '"127.0.0.1:9190"', '"board"'))


@functools.lru_cache(maxsize=None)
def _calls(callee: str, schema: tuple[Option, ...]) -> st.SearchStrategy[str]:
    if not schema:
        return st.sampled_from((callee, f"{callee}()"))
    return settings_of(schema, max_size=3).map(lambda args: _call(callee, args) if args else callee)


@st.composite
def value_of(draw, opt: Option) -> str:
    """A value for `opt`: valid most of the time, now and then a search domain of valid values,
    hostile one time in ten."""
    if rarely(draw, 10):
        return draw(hostile_values())
    if rarely(draw, 8):
        return draw(domain_value(opt))
    return draw(_valid_value(opt))


@st.composite
def domain_value(draw, opt: Option) -> str:
    """A search domain over values of `opt`'s kind (`loguniform(1e-4, 0.1)`), now and then of the
    wrong arity or form."""
    callee = draw(st.sampled_from(DOMAIN_CALLS))
    values = draw(st.lists(_valid_value(opt), min_size=1, max_size=3))
    log = ", log = true" if callee == "int" and rarely(draw, 3) else ""
    return f"{callee}({', '.join(values)}{log})"


@st.composite
def settings_of(draw, schema: Sequence[Option], max_size: int = 4) -> list[tuple[str, str]]:
    """Some of `schema`'s settings, each at most once; rarely an unknown or repeated one."""
    chosen = (
        draw(st.lists(st.sampled_from(tuple(schema)), max_size=max_size, unique_by=lambda o: o.name)) if schema else []
    )
    settings = [(o.name, draw(value_of(o))) for o in chosen]
    if rarely(draw, 15):
        settings.append((draw(names), draw(hostile_values())))
    if settings and rarely(draw, 20):
        settings.append(settings[0])
    return settings


def _body(settings: Sequence[tuple[str, str]], sep: str = "  ") -> str:
    return "{ " + sep.join(f"{k} = {v}" for k, v in settings) + " }"


# -- blocks ------------------------------------------------------------------------------------


def _cost_schemas() -> dict[str, Sequence[Option]]:
    return dict(CostModelCalls().items())


@st.composite
def headed_block(draw, keyword: str, table: dict[str, Sequence[Option]], usual: str) -> str:
    """`task classify { ... }`, `data digits(split = 0.5)`, `model cnn(...) { ... }`, ..."""
    head = draw(names if rarely(draw, 20) else st.sampled_from((usual, usual, *table)))
    schema = tuple(table.get(head, ()))
    if keyword == "task":
        schema = schema or TASKS["classify"]
        settings = [("classes", draw(value_of(schema[0])))] + draw(settings_of(schema[1:], 1))
    else:
        settings = draw(settings_of(schema, 3))
    if settings and draw(st.booleans()):
        cut = draw(st.integers(0, len(settings)))
        return f"{keyword} {_call(head, settings[:cut])}" + (f" {_body(settings[cut:])}" if cut < len(settings) else "")
    return f"{keyword} {head}" + (
        f" {_body(settings, draw(st.sampled_from(('  ', ', ', chr(10) + '  '))))}"
        if settings or draw(st.booleans())
        else ""
    )


@st.composite
def target_block(draw) -> str:
    options = tuple(o for o in TARGET_OPTIONS if o.name != "cost")
    settings = draw(settings_of(options, 3))
    if draw(st.booleans()):
        costs = _cost_schemas()
        callee = draw(st.sampled_from(sorted(costs)))
        settings.append(("cost", draw(_calls(callee, tuple(costs[callee])))))
    return f"target {draw(st.sampled_from(('host', 'board')))} {_body(settings)}"


@st.composite
def constraints_block(draw) -> str:
    lines = []
    for metric in draw(st.lists(st.sampled_from(tuple(BUDGET_QUANTITIES)), max_size=4, unique=True)):
        op = draw(st.sampled_from(("<=", "<", ">=", ">") if metric == "accuracy" else ("<=", "<")))
        bound = draw(hostile_values() if rarely(draw, 10) else _quantity(BUDGET_QUANTITIES[metric], None, None))
        lines.append(f"{metric} {op} {bound}")
    if rarely(draw, 15):
        lines.append(f"{draw(names)} {draw(st.sampled_from(('<=', '>=', '=', '')))} {draw(hostile_values())}")
    return "constraints { " + draw(st.sampled_from(("  ", "\n  "))).join(lines) + " }"


@st.composite
def stage(draw, name: str) -> str:
    schemas = {p.name: p.options for p in default_registry()}
    schema = schemas.get(name, ())
    settings = draw(settings_of(schema, 3))
    cut = draw(st.integers(0, len(settings)))
    args, body = settings[:cut], settings[cut:]
    return (_call(name, args) if args else name) + (f" {_body(body)}" if body else "")


@st.composite
def pipeline_block(draw) -> str:
    passes = vocabulary()["passes"]
    if not rarely(draw, 5):  # in the usual order
        order = [p for p in ("nas", "hpo", "train", "amc", "haq", "lower") if p in passes]
        names_ = [p for p in order if (p in ("train", "lower") and not rarely(draw, 8)) or draw(st.booleans())]
    else:
        names_ = draw(st.lists(st.sampled_from(passes) | names, max_size=5))
    return "pipeline { " + "  ".join(draw(stage(n)) for n in names_) + " }"


@st.composite
def grammar_specs(draw) -> str:
    """A spec from the grammar: every block, now and then one missing, doubled, moved or garbled."""
    blocks = [draw(st.sampled_from(("spec my_spec_2", "spec", "")) if rarely(draw, 10) else st.just("spec s"))]
    blocks += [draw(headed_block("task", TASKS, "classify")), draw(headed_block("data", DATA_SOURCES, "digits"))]
    if not rarely(draw, 4):
        blocks.append(draw(headed_block("model", MODEL_FAMILIES, "cnn")))
    if draw(st.booleans()):
        blocks.append(draw(target_block()))
    if draw(st.booleans()):
        blocks.append(draw(constraints_block()))
    blocks.append(draw(pipeline_block()))
    if rarely(draw, 10):
        blocks = draw(st.lists(st.sampled_from(blocks), max_size=8))
    if rarely(draw, 10):
        blocks.insert(draw(st.integers(0, len(blocks))), draw(st.text(max_size=20) | st.sampled_from(GARBAGE)))
    return "\n".join(blocks) + draw(st.sampled_from(("\n", "", "\r\n", "\n\n# end\n")))


# -- mutations ---------------------------------------------------------------------------------

_TOKEN = re.compile(
    r'"(?:[^"\\\n]|\\.)*"|[A-Za-z_][A-Za-z0-9_]*|[+-]?(?:\d+\.\d+|\d+|\.\d+)(?:[eE][+-]?\d+)?|'
    r"\.\.|<=|>=|\S"
)
replacement_tokens = st.one_of(
    st.sampled_from(NUMBER_TEXTS),
    st.sampled_from(UNIT_TEXTS),
    st.sampled_from(GARBAGE),
    names,
    st.sampled_from(HOSTILE_STRINGS),
    deep_values,
    st.text(max_size=4),
)


@functools.lru_cache(maxsize=1)
def example_texts() -> tuple[str, ...]:
    return tuple(p.read_text() for p in EXAMPLES) + (SMALL_SPEC,)


@st.composite
def mutation(draw, text: str) -> str:
    """One damage to `text`."""
    kind = draw(st.sampled_from(("insert", "delete", "token", "token", "token", "line", "truncate")))
    if kind == "insert":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.sampled_from(GARBAGE) | st.text(min_size=1, max_size=3)) + text[at:]
    if kind == "delete" and text:
        at = draw(st.integers(0, len(text) - 1))
        return text[:at] + text[at + draw(st.integers(1, 12)) :]
    if kind == "line":
        lines = text.split("\n")
        at, other = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
        how = draw(st.sampled_from(("duplicate", "drop", "swap")))
        if how == "duplicate":
            lines.insert(at, lines[other])
        elif how == "drop":
            del lines[at]
        else:
            lines[at], lines[other] = lines[other], lines[at]
        return "\n".join(lines)
    if kind == "truncate":
        return text[: draw(st.integers(0, len(text)))]
    tokens = list(_TOKEN.finditer(text))
    if not tokens:
        return text + draw(replacement_tokens)
    token = tokens[draw(st.integers(0, len(tokens) - 1))]
    return text[: token.start()] + draw(replacement_tokens) + text[token.end() :]


@st.composite
def mutated_specs(draw) -> str:
    """An example spec with 1 to 4 mutations (a byte-order mark in front now and then)."""
    text = draw(st.sampled_from(example_texts()))
    if rarely(draw, 10):
        text = "\ufeff" + text
    for _ in range(draw(st.integers(1, 4))):
        text = draw(mutation(text))
    return text


specs = st.one_of(grammar_specs(), mutated_specs())


@st.composite
def spec_files(draw, texts: st.SearchStrategy[str] | None = None) -> bytes:
    """The bytes of a spec from `texts` (default `specs`): UTF-8, one in ten damaged (a stray byte,
    a multi-byte character cut short, an encoded surrogate)."""
    data = draw(texts if texts is not None else specs).encode("utf-8")
    if rarely(draw, 10):
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from((b"\xff", b"\xc3", b"\xe2\x82", b"\xed\xa0\x80", b"\x00"))) + data[at:]
    return data


# -- running and judging -----------------------------------------------------------------------

HANDLED = ("ok", "spec error")
MAX_LINES = 40  # MAX_SHOWN diagnostics of message, source line, caret and note, and "... and N more"
MAX_WIDTH = 1000


@dataclass(frozen=True)
class Outcome:
    kind: str  # "ok" | "spec error" | "internal error" | "exception" | "bad exit" | "no position" | "not one screen"
    detail: str = ""
    seconds: float = 0.0

    @property
    def handled(self) -> bool:
        return self.kind in HANDLED


def check_file(path: Path) -> Outcome:
    """`adl check PATH` in this process, stdout and stderr captured, judged by `judge_check`."""
    from adl.cli import main

    out, err = io.StringIO(), io.StringIO()
    start = time.monotonic()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code: int | None = main(["check", str(path)])
        raised = None
    except BaseException as exc:  # noqa: BLE001 - judging what escaped is the point
        code, raised = None, f"{type(exc).__name__}: {exc}"
    outcome = judge_check(str(path), code, out.getvalue(), err.getvalue(), raised)
    return Outcome(outcome.kind, outcome.detail, time.monotonic() - start)


def judge_check(filename: str, code: int | None, out: str, err: str, raised: str | None = None) -> Outcome:
    """Whether one `adl check` kept the contract; `raised` is the exception that escaped `main`, if any."""
    if raised is not None:
        return Outcome("exception", raised[:300])
    if "internal error" in err or "Traceback" in err or "Traceback" in out:
        return Outcome("internal error", err[-300:])
    shown = re.escape(printable(filename)) if len(filename) <= 400 else ".*"
    if code == 0:
        ok = out.startswith(f"{printable(filename)}: ok: ")
        return Outcome("ok") if ok else Outcome("bad exit", f"exit 0 printing {out[:200]!r}")
    if code != 2:
        return Outcome("bad exit", f"exit {code}: {err[-300:]}")
    lines = err.splitlines()
    if len(lines) > MAX_LINES or any(len(line) > MAX_WIDTH for line in lines):
        return Outcome("not one screen", f"{len(lines)} lines, the longest {max(map(len, lines))} characters")
    starts = [line for line in lines if not line.startswith(" ") and not line.startswith("... and ")]
    if not starts or not all(re.match(shown + r"(:\d+:\d+)?: error: ", line) for line in starts):
        return Outcome("no position", err[:300])
    return Outcome("spec error", starts[0][len(printable(filename)) :][:120])
