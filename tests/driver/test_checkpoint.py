from __future__ import annotations

import pickle

import pytest

import adl
from adl.driver.checkpoint import CheckpointStore, root_key, spec_fingerprint
from adl.ir import seal
from adl.ir.module import Module, PassRecord

pytestmark = pytest.mark.usefixtures("private_key_dir")


SPEC = "spec a\ntask classify { classes = 10 }\ndata digits\nmodel cnn\npipeline { train lower }"


def test_round_trip_and_atomic_files(tmp_path):
    tmp_path = tmp_path / "cache"
    store = CheckpointStore(tmp_path)
    module = Module(spec=adl.check(SPEC)).with_metrics(accuracy=0.9).establish("trained")
    module = module.evolve(log=(PassRecord("train", "train", "k", 1.0),))
    store.save("abc", module)
    loaded = store.load("abc")
    assert loaded.metrics["accuracy"] == 0.9 and loaded.facts == {"trained"} and loaded.log == module.log
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == [store.path("abc").name]
    assert store.load("other") is None


def test_a_corrupt_checkpoint_warns_and_is_ignored(tmp_path):
    store = CheckpointStore(tmp_path)
    seal.dump(b"not a pickle of a module", store.path("abc"))
    with pytest.warns(UserWarning, match="corrupt checkpoint"):
        assert store.load("abc") is None
    assert not store.path("abc").exists()


def test_a_planted_pickle_is_refused_not_run(tmp_path, planted):
    store = CheckpointStore(tmp_path)
    marker = tmp_path / "marker"
    store.path("abc").parent.mkdir(parents=True)
    store.path("abc").write_bytes(pickle.dumps(planted(marker)))
    refused = r"refusing checkpoint .*abc\.pkl: not written by this user's adl \(bad seal\)"
    with pytest.warns(UserWarning, match=refused):
        assert store.load("abc") is None
    assert not marker.exists() and not store.path("abc").exists()


def test_a_checkpoint_whose_files_vanished_is_not_reused(tmp_path):
    store = CheckpointStore(tmp_path)
    library = tmp_path / "model.so"
    library.write_bytes(b"x")
    store.save("k", Module(spec=adl.check(SPEC)).with_files(library=str(library)))
    assert store.load("k") is not None
    library.unlink()
    with pytest.warns(UserWarning, match=r"cached output .*model\.so is missing; rebuilding"):
        assert store.load("k") is None


def test_a_checkpoint_whose_output_changed_is_dropped(tmp_path):
    store = CheckpointStore(tmp_path)
    library = tmp_path / "model.so"
    library.write_bytes(b"\x7fELF a whole library")
    store.save("k", Module(spec=adl.check(SPEC)).with_files(library=str(library)))
    library.write_bytes(b"\x7fELF a wh")  # truncated
    with pytest.warns(UserWarning, match=r"cached output .*model\.so changed since it was written; rebuilding"):
        assert store.load("k") is None
    assert not store.path("k").exists()


def test_fingerprint_ignores_formatting_but_not_meaning():
    base = spec_fingerprint(adl.check(SPEC))
    reformatted = "# comment\n" + SPEC.replace("\n", "\n\n  ")
    assert spec_fingerprint(adl.check(reformatted)) == base
    assert spec_fingerprint(adl.check(SPEC.replace("digits", "digits { seed = 1 }"))) != base
    # the pipeline is keyed per pass, not in the root
    assert spec_fingerprint(adl.check(SPEC.replace("train lower", "train"))) == base
    assert root_key(adl.check(SPEC), "data", 0, "v") != root_key(adl.check(SPEC), "data", 1, "v")


def test_modules_pickle_with_read_only_mappings():
    module = Module(spec=adl.check(SPEC)).with_files(a="b")
    assert pickle.loads(pickle.dumps(module)).files == {"a": "b"}
