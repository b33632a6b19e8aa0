"""The data sources' setting schemas (`adl.data.DATA_SOURCES`, beside the loaders) match what
`load_dataset` takes, and the sources it knows."""

from __future__ import annotations

import inspect

from adl.data import DATA_SOURCES, SOURCES, load_dataset


def test_every_source_has_a_schema_whose_settings_load_dataset_takes():
    assert sorted(DATA_SOURCES) == list(SOURCES)
    parameters = inspect.signature(load_dataset).parameters
    for source, schema in DATA_SOURCES.items():
        for option in schema:
            assert option.name in parameters, f"{source}: {option.name}"


def test_shared_settings_have_the_loader_defaults():
    parameters = inspect.signature(load_dataset).parameters
    for option in DATA_SOURCES["digits"]:
        assert parameters[option.name].default == option.default, option.name
