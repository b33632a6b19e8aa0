"""`model onnx(...)` and `model torchvision(...)` as the checker sees them: files resolved against
the spec, carets on bad values, and which networks arrive trained (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

import adl
from adl.driver.checkpoint import spec_fingerprint
from adl.driver.depfile import dependencies
from adl.dsl.errors import AdlError
from adl.models.families import TORCHVISION_NAMES


def _spec(model: str, pipeline: str = "train(epochs = 1) lower") -> str:
    return f"task classify {{ classes = 10 }}\ndata digits()\n{model}\npipeline {{ {pipeline} }}\n"


def _check(tmp_path: Path, text: str):
    path = tmp_path / "spec.adl"
    path.write_text(text)
    return adl.check(text, str(path))


def _error(tmp_path: Path, text: str) -> AdlError:
    with pytest.raises(AdlError) as info:
        _check(tmp_path, text)
    return info.value


def _caret_under(err: AdlError, text: str, fragment: str) -> None:
    """The first diagnostic points at `fragment` in `text`."""
    span = err.diagnostics[0].span
    line = text.splitlines()[span.line - 1]
    assert line[span.column - 1 :].startswith(fragment), (line, span)


def test_an_onnx_block_resolves_its_file_against_the_spec_folder(tmp_path):
    (tmp_path / "nets").mkdir()
    (tmp_path / "nets" / "net.onnx").write_bytes(b"not checked here")
    spec = _check(tmp_path, _spec('model onnx(path = "nets/net.onnx")'))
    assert spec.model.family == "onnx"
    assert spec.model.as_dict() == {"path": str((tmp_path / "nets" / "net.onnx").resolve()), "normalize": False}


def test_a_missing_model_file_is_a_caret_at_the_path(tmp_path):
    text = _spec('model onnx(path = "gone.onnx")')
    err = _error(tmp_path, text)
    assert "model file 'gone.onnx' does not exist" in str(err)
    _caret_under(err, text, '"gone.onnx"')


def test_a_folder_is_not_a_model_file(tmp_path):
    (tmp_path / "dir.onnx").mkdir()
    text = _spec('model onnx(path = "dir.onnx")')
    err = _error(tmp_path, text)
    assert "model file 'dir.onnx' is not a file" in str(err)
    _caret_under(err, text, '"dir.onnx"')


def test_the_onnx_path_is_required(tmp_path):
    err = _error(tmp_path, _spec("model onnx()"))
    assert "missing required setting 'path'" in str(err)


def test_torchvision_names_and_choices_are_checked(tmp_path):
    text = _spec('model torchvision(name = "vgg16")')
    err = _error(tmp_path, text)
    assert "must be one of" in str(err) or "unknown name" in str(err)
    text = _spec("model torchvision(name = resnet18, stem = sideways)")
    err = _error(tmp_path, text)
    assert "unknown stem 'sideways'" in str(err)
    _caret_under(err, text, "sideways")
    spec = _check(tmp_path, _spec("model torchvision(name = resnet18, stem = replace, head = replace)"))
    assert spec.model.as_dict() == {
        "name": "resnet18",
        "weights": "",
        "stem": "replace",
        "head": "replace",
        "normalize": False,
    }
    assert {"mobilenet_v2", "resnet18", "resnet50", "mnasnet1_0", "efficientnet_b0", "shufflenet_v2_x1_0"} <= set(
        TORCHVISION_NAMES
    )


def test_an_onnx_network_arrives_trained_so_amc_may_run_without_train(tmp_path):
    (tmp_path / "net.onnx").write_bytes(b"x")
    spec = _check(tmp_path, _spec('model onnx(path = "net.onnx")', "amc haq lower"))
    assert [s.pass_name for s in spec.pipeline] == ["amc", "haq", "lower"]


def test_torchvision_arrives_trained_only_with_weights_and_its_own_head(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"x")
    _check(tmp_path, _spec('model torchvision(name = resnet18, weights = "w.pt")', "amc lower"))
    for model in (
        "model torchvision(name = resnet18)",
        'model torchvision(name = resnet18, weights = "w.pt", head = replace)',
    ):
        err = _error(tmp_path, _spec(model, "amc lower"))
        assert "pass 'amc' needs trained" in str(err)


def test_where_a_value_is_written_is_not_part_of_what_the_spec_means(tmp_path):
    (tmp_path / "net.onnx").write_bytes(b"x")
    one = _check(tmp_path, _spec('model onnx(path = "net.onnx")'))
    two = _check(tmp_path, _spec('model onnx {\n   path = "net.onnx"\n}'))
    assert one.model.value_span("path") != two.model.value_span("path")
    assert spec_fingerprint(one) == spec_fingerprint(two)


def test_the_depfile_names_the_model_files(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(b"x")
    spec = _check(tmp_path, _spec('model torchvision(name = resnet18, weights = "w.safetensors")'))
    assert (tmp_path / "w.safetensors").resolve() in dependencies(spec, [])


def test_the_reports_say_where_an_imported_network_came_from_and_what_adl_replaced():
    from adl.driver.run import model_source_section
    from adl.ir.report import Table

    assert model_source_section(None) == []
    record = {
        "family": "torchvision",
        "name": "resnet18",
        "weights": "w.pt",
        "sha256": "ab" * 32,
        "input_contract": "the data's values as they are (the imported network's own contract)",
        "replaced": [{"layer": "fc", "before": "Linear(512 -> 1000)", "after": "Linear(512 -> 10)", "init": "fresh"}],
    }
    (section,) = model_source_section(record)
    text = "\n".join(section.markdown())
    assert section.title == "Model"
    assert "torchvision's resnet18 with weights w.pt" in text and "ab" * 32 in text
    table = next(b for b in section.blocks if isinstance(b, Table))
    assert table.rows == [("fc", "Linear(512 -> 1000)", "Linear(512 -> 10)", "fresh")]
