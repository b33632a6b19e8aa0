"""The `model` families' option schemas (`adl.models.families`) match the builders they describe."""

from __future__ import annotations

import inspect

import pytest

pytest.importorskip("torch")

from adl.models import zoo
from adl.models.families import IMPORTED_FAMILIES, MODEL_FAMILIES, TORCHVISION


def test_every_builder_has_a_schema_and_every_setting_is_a_builder_argument_with_the_same_default():
    assert [f for f in MODEL_FAMILIES if f not in IMPORTED_FAMILIES] == list(zoo.FAMILIES)
    for family, schema in MODEL_FAMILIES.items():
        if family in IMPORTED_FAMILIES:
            continue
        parameters = inspect.signature(zoo.FAMILIES[family]).parameters
        for option in schema:
            assert option.name in parameters, f"{family}: {option.name}"
            assert parameters[option.name].default == option.default, f"{family}: {option.name}"


def test_the_torchvision_schema_matches_its_builder():
    from adl.models.torchvision_import import build_torchvision

    parameters = inspect.signature(build_torchvision).parameters
    for option in TORCHVISION:
        if option.name == "normalize":  # applied around the network by adl.models.imported
            continue
        assert option.name in parameters, option.name
        default = parameters[option.name].default
        if option.required:
            assert default is inspect.Parameter.empty, option.name
        else:  # the spec's "" (no file) is the builder's None
            assert (default if default is not None else "") == option.default, option.name
