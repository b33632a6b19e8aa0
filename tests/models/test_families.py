"""The `model` families' option schemas (`adl.models.families`) match the builders they describe."""

from __future__ import annotations

import inspect

import pytest

pytest.importorskip("torch")

from adl.models import zoo
from adl.models.families import MODEL_FAMILIES


def test_every_builder_has_a_schema_and_every_setting_is_a_builder_argument_with_the_same_default():
    assert list(MODEL_FAMILIES) == list(zoo.FAMILIES)
    for family, schema in MODEL_FAMILIES.items():
        parameters = inspect.signature(zoo.FAMILIES[family]).parameters
        for option in schema:
            assert option.name in parameters, f"{family}: {option.name}"
            assert parameters[option.name].default == option.default, f"{family}: {option.name}"
