"""The adl language: grammar, AST with spans, and compiler-style errors. Imports nothing else of adl."""

from adl.dsl.ast import Span, SpecFile
from adl.dsl.errors import AdlError, Diagnostic
from adl.dsl.parser import parse, parse_pipeline_text

__all__ = ["AdlError", "Diagnostic", "Span", "SpecFile", "parse", "parse_pipeline_text"]
