"""Search domains in pass options: `uniform`, `loguniform`, `int`, `choice` (issue 26).

A registry of stand-in passes keeps these tests independent of the real passes' options: `fit`
is tunable (its options cover every kind a domain may search), `squeeze` is not.
"""

from __future__ import annotations

import pytest

import adl
from adl.dsl.ast import Span
from adl.dsl.errors import AdlError
from adl.dsl.parser import parse, parse_pipeline_text
from adl.ir.domains import DOMAIN_NAMES, Domain, domains_in, has_domains, substitute
from adl.ir.options import Option, OptionError, coerce, coerce_settings, format_option, format_value
from adl.ir.passes import Pass, PassRegistry
from adl.ir.pipeline import Pipeline, resolve_stage
from adl.ir.spec import CallValue

OPTIMIZERS = {
    "adam": (Option("lr", "float", 1e-3, low=0.0), Option("weight_decay", "float", 0.0, low=0.0)),
    "sgd": (Option("lr", "float", 0.1, low=0.0), Option("nesterov", "bool", True)),
}


class Fit(Pass):
    name = "fit"
    tunable = True
    options = (
        Option("epochs", "int", 10, low=1, high=1000),
        Option("batch_size", "int", 64, low=1, high=65536),
        Option("lr", "float", 0.01, low=0.0),
        Option("smoothing", "fraction", 0.0, low=0.0, high=0.5),
        Option("timeout", "time", 1.0, low=0.0),
        Option("memory", "bytes", 1e6, low=0.0),
        Option("params", "count", 1e3, low=0.0, high=1e9),
        Option("schedule", "name", "cosine", choices=("cosine", "constant", "step")),
        Option("shuffle", "bool", True),
        Option("widths", "int_list", (16,), low=1, high=4096),
        Option("bits", "int_range", (2, 8), low=1, high=32),
        Option("optimizer", "call", CallValue("adam"), calls=OPTIMIZERS, noun="optimizer"),
    )


class Squeeze(Pass):
    name = "squeeze"
    options = (Option("flops", "fraction", 0.5, low=0.0, high=1.0),)


class Lower(Pass):
    name = "lower"


@pytest.fixture
def registry() -> PassRegistry:
    return PassRegistry({"fit": Fit, "squeeze": Squeeze, "lower": Lower})


def pipeline(text: str, registry: PassRegistry) -> Pipeline:
    return Pipeline.parse(text, registry, filename="--pipeline")


def fit_options(text: str, registry: PassRegistry) -> dict:
    """The explicit options of the `fit` stage written as `fit{text}`."""
    (stage,) = pipeline(f"fit{{{text}}}", registry)
    return stage.explicit


def error_of(text: str, registry: PassRegistry) -> AdlError:
    with pytest.raises(AdlError) as info:
        pipeline(text, registry)
    return info.value


def unmark(marked: str) -> tuple[str, str]:
    """The text without its « » marks, and the part they enclose (where the caret must be)."""
    before, rest = marked.split("«")
    at, after = rest.split("»")
    return before + at + after, at


def assert_caret(err: AdlError, message: str, marked: str, note: str | None = None) -> None:
    """The first diagnostic says `message` with its caret spanning what « » enclose in the
    one-line `marked`; `note`, when given, is part of the note."""
    text, at = unmark(marked)
    diag = err.diagnostics[0]
    assert diag.message == message
    column = marked.index("«") + 1
    assert (diag.span.line, diag.span.column, diag.span.end_column) == (1, column, column + len(at))
    lines = err.render().splitlines()
    assert lines[0].endswith(f":1:{column}: error: {message}")
    assert lines[2].index("^") - lines[2].index("|") - 2 == column - 1  # the caret under the column
    assert lines[2].count("~") == len(at) - 1
    if note is not None:
        assert note in (diag.note or "")


# -- each domain, for several kinds ----------------------------------------------------------


@pytest.mark.parametrize(
    "setting, expected",
    [
        ("epochs = int(3, 12)", Domain("int", 3, 12)),
        ("batch_size = int(8, 256, log = true)", Domain("int", 8, 256, log=True)),
        ("batch_size = int(8, 256, log = false)", Domain("int", 8, 256)),
        ("params = int(10 K, 2 M)", Domain("int", 10_000, 2_000_000)),
        ("lr = loguniform(1e-4, 1e-1)", Domain("loguniform", 1e-4, 0.1)),
        ("lr = uniform(0, 0.001)", Domain("uniform", 0.0, 0.001)),
        ("smoothing = uniform(0 %, 20 %)", Domain("uniform", 0.0, 0.2)),
        ("smoothing = uniform(0.05, 0.1)", Domain("uniform", 0.05, 0.1)),
        ("timeout = uniform(1 ms, 3 ms)", Domain("uniform", 0.001, 0.003)),
        ("memory = loguniform(1 KiB, 2 MiB)", Domain("loguniform", 1024.0, 2 * 1024.0**2)),
        ("params = uniform(1 K, 2 K)", Domain("uniform", 1000.0, 2000.0)),
        ("batch_size = choice(32, 64, 128)", Domain("choice", choices=(32, 64, 128))),
        ("schedule = choice(cosine, constant)", Domain("choice", choices=("cosine", "constant"))),
        ("shuffle = choice(true, false)", Domain("choice", choices=(True, False))),
        ("smoothing = choice(0 %, 10 %, 0.2)", Domain("choice", choices=(0.0, 0.1, 0.2))),
        ("timeout = choice(1 s, 500 ms)", Domain("choice", choices=(1.0, 0.5))),
        ("widths = choice([16, 32], [64])", Domain("choice", choices=((16, 32), (64,)))),
        ("bits = choice(2..4, 4..8)", Domain("choice", choices=((2, 4), (4, 8)))),
    ],
)
def test_each_domain_form_becomes_a_domain_in_the_options_base_unit(setting, expected, registry):
    (value,) = fit_options(setting, registry).values()
    assert value == expected
    assert value.span is not None and value.span.line == 1
    assert type(value.low) is type(expected.low)  # int(...) keeps integers, uniform(...) floats


def test_a_domain_inside_a_call_valued_option_is_found_by_its_dotted_path(registry):
    options = fit_options("epochs = int(3, 12), optimizer = adam(lr = loguniform(1e-4, 1e-1))", registry)
    optimizer = options["optimizer"]
    assert optimizer.name == "adam" and optimizer.get("weight_decay") == 0.0  # defaults filled in as ever
    assert domains_in(options) == {"epochs": Domain("int", 3, 12), "optimizer.lr": Domain("loguniform", 1e-4, 0.1)}


def test_the_spec_form_from_the_issue_resolves(registry):
    tree = parse(
        """
pipeline {
  fit(epochs = int(3, 12), batch_size = choice(32, 64, 128),
      optimizer = adam(lr = loguniform(1e-4, 1e-1), weight_decay = uniform(0, 0.001)),
      schedule = choice(cosine, constant), smoothing = uniform(0 %, 20 %))
  lower
}
""",
        "hpo.adl",
    )
    (block,) = tree.items
    errors: list = []
    fit, lower = (resolve_stage(stage, registry, errors) for stage in block.stages)
    assert errors == []
    space = domains_in(fit.as_dict())
    # in the order the pass declares its options
    assert list(space) == ["epochs", "batch_size", "smoothing", "schedule", "optimizer.lr", "optimizer.weight_decay"]
    assert space["smoothing"] == Domain("uniform", 0.0, 0.2)
    assert space["optimizer.lr"].span == Span(4, 29, 4, 51)
    assert not has_domains(lower.as_dict())


# -- printing and the round trip -------------------------------------------------------------


@pytest.mark.parametrize(
    "domain, text",
    [
        (Domain("loguniform", 0.0001, 0.1), "loguniform(0.0001,0.1)"),
        (Domain("uniform", 0.0, 0.001), "uniform(0.0,0.001)"),
        (Domain("int", 3, 12), "int(3,12)"),
        (Domain("int", 8, 256, log=True), "int(8,256,log=true)"),
        (Domain("choice", choices=(32, 64)), "choice(32,64)"),
        (Domain("choice", choices=("cosine", True, "a b")), 'choice(cosine,true,"a b")'),
    ],
)
def test_a_domain_describes_itself_in_pipeline_syntax(domain, text):
    assert domain.describe(format_value) == text == format_value(domain)


def test_a_domain_prints_its_bounds_as_its_option_prints_a_value():
    assert format_option(Option("t", "time"), Domain("uniform", 0.001, 0.003)) == "uniform(0.001s,0.003s)"
    assert format_option(Option("m", "bytes"), Domain("choice", choices=(1024.0, 2048.0))) == "choice(1024.0B,2048.0B)"
    assert format_option(Option("b", "int_range"), Domain("choice", choices=((2, 4), (4, 8)))) == "choice(2..4,4..8)"


@pytest.mark.parametrize(
    "text, printed",
    [
        (
            "fit{epochs=int(3,12),optimizer=adam(lr=loguniform(0.0001,0.1))},lower",
            "fit{epochs=int(3,12),optimizer=adam(lr=loguniform(0.0001,0.1),weight_decay=0.0)},lower",
        ),
        ("fit{ lr = loguniform(1e-4, 1e-1) }", "fit{lr=loguniform(0.0001,0.1)}"),
        ("fit{batch_size=int(8,256,log=true)}", "fit{batch_size=int(8,256,log=true)}"),
        ("fit{smoothing=uniform(0 %, 20 %)}", "fit{smoothing=uniform(0.0,0.2)}"),
        ("fit{timeout=uniform(1 ms, 3 ms)}", "fit{timeout=uniform(0.001s,0.003s)}"),
        ("fit{memory=choice(1 KiB, 2 KiB)}", "fit{memory=choice(1024.0B,2048.0B)}"),
        ("fit{params=int(1 K, 2 K)}", "fit{params=int(1000,2000)}"),
        ("fit{schedule=choice(cosine,step),shuffle=choice(true,false)}", None),
        ("fit{widths=choice([16,32],[64]),bits=choice(2..4,4..8)}", None),
        ("fit{optimizer=sgd(lr=uniform(0.01,0.5),nesterov=choice(true,false))}", None),
    ],
)
def test_the_pipeline_string_round_trips(text, printed, registry):
    parsed = pipeline(text, registry)
    assert str(parsed) == (printed or text)
    again = pipeline(str(parsed), registry)
    assert again == parsed and str(again) == str(parsed)
    assert [p.explicit for p in again] == [p.explicit for p in parsed]


def test_a_pass_built_from_python_takes_domains(registry):
    fit = Fit(epochs=Domain("int", 3, 12), optimizer=CallValue("adam", (("lr", Domain("loguniform", 1e-4, 0.1)),)))
    assert str(fit) == "fit{epochs=int(3,12),optimizer=adam(lr=loguniform(0.0001,0.1))}"
    assert fit.config["epochs"] == Domain("int", 3, 12) and fit.config["batch_size"] == 64
    assert pipeline(str(fit), registry).passes[0].explicit["epochs"] == Domain("int", 3, 12)


# -- domains_in / substitute ------------------------------------------------------------------


def _nested() -> dict:
    return {
        "epochs": Domain("int", 3, 12),
        "batch_size": 64,
        "optimizer": CallValue(
            "adam", (("lr", Domain("loguniform", 1e-4, 0.1)), ("inner", CallValue("x", (("k", Domain("int", 1, 4)),))))
        ),
        "distributed": CallValue("none"),
    }


def test_domains_in_finds_every_domain_by_dotted_path_in_order():
    assert list(domains_in(_nested())) == ["epochs", "optimizer.lr", "optimizer.inner.k"]
    assert domains_in({"a": 1, "b": CallValue("f", (("c", 2),))}) == {}


def test_substitute_puts_the_chosen_values_in_place_and_keeps_the_structure():
    values = _nested()
    chosen = {"epochs": 7, "optimizer.lr": 0.003, "optimizer.inner.k": 2}
    result = substitute(values, chosen)
    assert result == {
        "epochs": 7,
        "batch_size": 64,
        "optimizer": CallValue("adam", (("lr", 0.003), ("inner", CallValue("x", (("k", 2),))))),
        "distributed": CallValue("none"),
    }
    assert not has_domains(result)
    assert values == _nested()  # not changed in place
    assert substitute({"a": 1}, {}) == {"a": 1}


def test_substitute_names_a_domain_without_a_chosen_value():
    with pytest.raises(ValueError, match=r"'optimizer\.lr'"):
        substitute(_nested(), {"epochs": 7, "optimizer.inner.k": 2})


def test_has_domains_looks_into_calls():
    assert has_domains(_nested())
    assert has_domains({"o": CallValue("adam", (("lr", Domain("uniform", 0.0, 1.0)),))})
    assert has_domains(Domain("choice", choices=(1, 2)))
    assert not has_domains({"o": CallValue("adam", (("lr", 0.1),)), "e": 3})
    assert not has_domains(3)


def test_domain_equality_ignores_the_span():
    assert Domain("int", 3, 12, span=Span(1, 1, 1, 5)) == Domain("int", 3, 12)
    assert DOMAIN_NAMES == ("uniform", "loguniform", "int", "choice")


# -- the grammar: positional arguments ---------------------------------------------------------


def test_calls_take_positional_values_before_named_ones():
    (stage,) = parse_pipeline_text('f{x=int(1,2,log=true),y=g(a,"b",[1],2..3,h(k=1),)}')
    x, y = (s.value for s in stage.settings)
    assert [n.value for n in x.positional] == [1, 2] and [a.key for a in x.args] == ["log"]
    assert [type(v).__name__ for v in y.positional] == ["Name", "String", "ListValue", "RangeValue", "Call"]
    assert y.args == ()


@pytest.mark.parametrize(
    "marked, message, note",
    [
        (
            "pipeline { train(«3») }",
            "positional argument: write `name = value`",
            "a pass's options are named, e.g. `train(option = value)`",
        ),
        ("pipeline { train(«int(3, 12)») }", "positional argument: write `name = value`", "train(option = value)"),
        (
            "model cnn(«3»)",
            "positional argument: write `name = value`",
            "a block's head takes settings, e.g. `model cnn(name = value)`",
        ),
        ("data digits(«0.8»)", "positional argument: write `name = value`", "data digits(name = value)"),
        (
            "pipeline { fit(lr = uniform(a = 1, «2»)) }",
            "positional argument after a named one",
            "positional arguments first",
        ),
        ("pipeline { train(epochs «3») }", "expected '=' after 'epochs'", None),
        ("model cnn(«10» = x)", "expected a setting name, found '10'", "a setting is written `name = value`"),
    ],
)
def test_positional_arguments_where_settings_belong_are_caret_errors(marked, message, note):
    with pytest.raises(AdlError) as info:
        parse(unmark(marked)[0], "p.adl")
    assert_caret(info.value, message, marked, note)


# -- errors, each with its caret -----------------------------------------------------------------


@pytest.mark.parametrize(
    "marked, message, note",
    [
        # the wrong domain for the option's kind
        (
            "fit{epochs=«uniform»(3,12)}",
            "'epochs' takes an integer: search it with int(...)",
            "`epochs = int(low, high)`",
        ),
        (
            "fit{lr=«int»(1,3)}",
            "int(...) searches an integer, but 'lr' takes a number",
            "search it with uniform(low, high) or loguniform(low, high)",
        ),
        (
            "fit{schedule=«uniform»(1,2)}",
            "uniform(...) searches a number, but 'schedule' takes a name",
            "write `schedule = choice(a, b, ...)`",
        ),
        ("fit{shuffle=«int»(0,1)}", "int(...) searches an integer, but 'shuffle' takes true or false", "choice(a, b"),
        (
            "fit{optimizer=«choice(adam,sgd)»}",
            "'optimizer' cannot be searched with choice(...): search its arguments instead",
            "e.g. `optimizer = adam(option = uniform(low, high))`",
        ),
        # arity
        ("fit{lr=«uniform(0.1)»}", "uniform(...) takes two bounds, got 1", "write `lr = uniform(low, high)`"),
        ("fit{epochs=int(1,2,«3»)}", "int(...) takes two bounds, got 3", "`epochs = int(low, high) or int("),
        ("fit{lr=«loguniform()»}", "loguniform(...) takes two bounds, got 0", None),
        (
            "fit{batch_size=«choice(32)»}",
            "choice(...) needs at least two values, got 1",
            "a single value is written as it is: `batch_size = value`",
        ),
        # named arguments
        ("fit{lr=uniform(0,1,«log»=true)}", "unknown argument 'log' for uniform(...)", "takes no named arguments"),
        ("fit{epochs=int(1,9,«step»=2)}", "unknown argument 'step' for int(...)", "takes only `log = true|false`"),
        ("fit{epochs=int(1,9,log=true,«log»=false)}", "duplicate argument 'log'", "first set at 1:20"),
        ("fit{epochs=int(1,9,log=«yes»)}", "'log' must be true or false", None),
        # bounds: order, log scales, the option's own range and units
        ("fit{lr=«uniform(0.1,0.01)»}", "empty search domain: uniform(...) needs low < high, got 0.1 and 0.01", None),
        ("fit{epochs=«int(5,5)»}", "empty search domain: int(...) needs low < high, got 5 and 5", None),
        (
            "fit{lr=loguniform(«0»,0.1)}",
            "loguniform(...) needs a low bound above 0, got 0",
            "a log scale starts above 0",
        ),
        ("fit{params=int(«0»,9,log=true)}", "int(..., log = true) needs a low bound above 0, got 0", None),
        ("fit{batch_size=int(«0»,9)}", "'batch_size' must be at least 1, got 0", None),
        ("fit{epochs=int(1,«5000»)}", "'epochs' must be at most 1000, got 5000", None),
        ("fit{epochs=int(1,«2.5»)}", "'epochs' must be an integer, got 2.5", None),
        ("fit{params=int(«1.5»,9)}", "int(...) takes whole numbers, got 1.5", None),
        ("fit{smoothing=uniform(0 %, «80 %»)}", "'smoothing' must be at most 0.5, got 80 %", None),
        ("fit{smoothing=uniform(0, «2»)}", "'smoothing' must be a fraction in [0, 1] or a percentage, got 2", None),
        ("fit{timeout=uniform(«1», 3 ms)}", "'timeout' needs a unit: expected a time (ns, us, ms, s)", None),
        ("fit{timeout=uniform(«1 KB», 3 ms)}", "wrong unit 'KB' for 'timeout': expected a time (ns, us, ms, s)", None),
        # choices
        ("fit{schedule=choice(cosine,«linear»)}", "unknown schedule 'linear'", "cosine, constant, step"),
        ("fit{batch_size=choice(32,64,«32»)}", "choice(...) lists 32 twice", "first at 1:23"),
        ("fit{smoothing=choice(10 %,«0.1»)}", "choice(...) lists 0.1 twice", "first at 1:22"),
        # nesting and lists
        ("fit{lr=choice(«uniform(0,1)»,0.5)}", "search domains do not nest", None),
        (
            "fit{widths=[«choice(16,32)»,64]}",
            "a search domain stands for the whole value of 'widths', not for one item",
            "e.g. `widths = choice([16, 32], [32, 64])`",
        ),
        # a positional value in a call that is not a domain
        (
            "fit{optimizer=adam(«0.1»)}",
            "positional argument: write `name = value`",
            "the arguments of adam(...) are named: lr, weight_decay",
        ),
        # a pass that is not tunable
        (
            "fit,squeeze{flops=«uniform(10 %, 50 %)»}",
            "pass 'squeeze' has no searchable options",
            "search domains are allowed in: fit",
        ),
    ],
)
def test_bad_domains_are_caret_errors(marked, message, note, registry):
    assert_caret(error_of(unmark(marked)[0], registry), message, marked, note)


def test_a_non_tunable_pass_lists_none_when_no_pass_takes_domains():
    registry = PassRegistry({"squeeze": Squeeze})
    err = error_of("squeeze{flops=choice(0.2,0.4)}", registry)
    assert err.diagnostics[0].note == "no pass takes search domains"


def test_every_bad_stage_is_reported(registry):
    err = error_of("squeeze{flops=uniform(0,1)},fit{epochs=uniform(1,2)}", registry)
    assert [d.message for d in err.diagnostics] == [
        "pass 'squeeze' has no searchable options",
        "'epochs' takes an integer: search it with int(...)",
    ]


# -- outside pass options, a domain is an error -------------------------------------------------


@pytest.mark.parametrize(
    "kind, text",
    [
        ("fraction", "uniform(0.5, 0.9)"),
        ("int", "int(1, 9)"),
        ("name", "choice(a, b)"),
        ("int_list", "choice([1], [2])"),
    ],
)
def test_domains_are_refused_where_domains_is_off(kind, text):
    (stage,) = parse_pipeline_text(f"f{{x={text}}}")
    (setting,) = stage.settings
    name = text.partition("(")[0]
    with pytest.raises(OptionError, match=rf"^search domain '{name}\(\.\.\.\)' is allowed only in pass options"):
        coerce(setting.value, Option("x", kind, choices=("a", "b")))
    with pytest.raises(OptionError) as info:
        coerce_settings(stage.settings, [Option("x", kind, choices=("a", "b"))], what="w", span=None)
    assert info.value.diagnostic.span == setting.value.span
    assert isinstance(coerce(setting.value, Option("x", kind, choices=("a", "b")), domains=True), Domain)


@pytest.mark.parametrize(
    "line, at",
    [
        ("data digits { split = uniform(0.5, 0.9) }", "uniform(0.5, 0.9)"),
        ("data digits(seed = int(0, 9))", "int(0, 9)"),
        ("target host { cores = choice(1, 2) }", "choice(1, 2)"),
        ("target host { cost = roofline(gflops = uniform(1, 2)) }", "uniform(1, 2)"),
        ("target host { tune = choice(none, none) }", "choice(none, none)"),
    ],
)
def test_domains_in_blocks_are_caret_errors(line, at):
    text = f"task classify {{ classes = 10 }}\n{line}\npipeline {{ lower }}\n"
    if not line.startswith("data"):
        text = "data digits\n" + text
    with pytest.raises(AdlError) as info:
        adl.check(text, "d.adl")
    (diag,) = [d for d in info.value.diagnostics if "search domain" in d.message]
    name = at.partition("(")[0]
    assert diag.message == f"search domain '{name}(...)' is allowed only in pass options (pipeline stages)"
    line_no = text.splitlines().index(line) + 1
    column = line.index(at) + 1
    assert (diag.span.line, diag.span.column, diag.span.end_column) == (line_no, column, column + len(at))
