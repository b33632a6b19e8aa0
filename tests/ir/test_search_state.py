"""A search pass's resumable state: saved and loaded under a key, another search's state or an
unreadable file ignored, written atomically."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adl.ir.search_state import KEY_FIELD, load_search_state, save_search_state, search_key

STATE = {"counts": [8, 16, 4], "info": {"accuracy": 0.9375, "loss": 0.25}, "history": [{"episode": 0}]}


def test_a_saved_state_loads_back_under_its_key(tmp_path):
    path = save_search_state(tmp_path, "policy.json", "k1", STATE)
    assert path == tmp_path / "policy.json"
    assert load_search_state(tmp_path, "policy.json", "k1") == STATE


def test_the_file_holds_the_fields_beside_the_key_so_an_edited_field_still_loads(tmp_path):
    save_search_state(tmp_path, "policy.json", "k1", STATE)
    saved = json.loads((tmp_path / "policy.json").read_text())
    assert saved == {**STATE, KEY_FIELD: "k1"}
    saved["history"] = "edited"
    (tmp_path / "policy.json").write_text(json.dumps(saved))
    assert load_search_state(tmp_path, "policy.json", "k1") == {**STATE, "history": "edited"}


def test_a_state_saved_under_another_key_or_none_is_ignored(tmp_path):
    save_search_state(tmp_path, "policy.json", "k1", STATE)
    assert load_search_state(tmp_path, "policy.json", "k2") is None
    assert load_search_state(tmp_path, "policy.json", "k1") == STATE  # left as it was
    (tmp_path / "old.json").write_text(json.dumps(STATE))  # written before states had keys
    assert load_search_state(tmp_path, "old.json", "k1") is None


def test_no_file_is_no_state(tmp_path):
    assert load_search_state(tmp_path, "policy.json", "k1") is None
    assert load_search_state(tmp_path / "missing", "policy.json", "k1") is None


@pytest.mark.parametrize(
    "content",
    [
        b'{"counts": [8, 16',  # truncated
        b"",
        b"\xff\xfe\x00garbage",  # not UTF-8
        b"[1, 2, 3]",  # JSON, not an object
    ],
)
def test_an_unreadable_file_is_ignored_with_a_warning(tmp_path, content):
    (tmp_path / "policy.json").write_bytes(content)
    with pytest.warns(UserWarning, match=r"search state .*policy\.json"):
        assert load_search_state(tmp_path, "policy.json", "k1") is None


def test_a_new_save_replaces_the_old_and_leaves_no_temporary_file(tmp_path):
    save_search_state(tmp_path, "policy.json", "k1", STATE)
    save_search_state(tmp_path, "policy.json", "k2", {"counts": [1]})
    assert load_search_state(tmp_path, "policy.json", "k2") == {"counts": [1]}
    assert [p.name for p in tmp_path.iterdir()] == ["policy.json"]


def test_a_save_cut_off_midway_keeps_the_previous_state(tmp_path, monkeypatch):
    save_search_state(tmp_path, "policy.json", "k1", STATE)
    write_text = Path.write_text

    def killed_halfway(self: Path, text: str, *args, **kwargs) -> int:
        write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise KeyboardInterrupt  # the compile is killed while the new state is being written

    monkeypatch.setattr(Path, "write_text", killed_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_search_state(tmp_path, "policy.json", "k2", {"counts": [1, 2, 3]})
    monkeypatch.undo()
    assert load_search_state(tmp_path, "policy.json", "k1") == STATE
    assert [p.name for p in tmp_path.iterdir()] == ["policy.json"]


def test_a_state_may_not_carry_its_own_key_field(tmp_path):
    with pytest.raises(ValueError, match=KEY_FIELD):
        save_search_state(tmp_path, "policy.json", "k1", {**STATE, KEY_FIELD: "forged"})
    assert not (tmp_path / "policy.json").exists()


def test_the_search_key_is_stable_and_tells_configurations_apart():
    config = {"episodes": 300, "budgets": {"flops": 0.5, "params": 0.4}, "seed": 0}
    reordered = {"seed": 0, "budgets": {"params": 0.4, "flops": 0.5}, "episodes": 300}
    assert search_key("checkpoint", config) == search_key("checkpoint", reordered)
    assert len(search_key("checkpoint", config)) == 64
    assert search_key("checkpoint", config) != search_key("checkpoint", {**config, "seed": 1})
    assert search_key("checkpoint", config) != search_key("other checkpoint", config)
