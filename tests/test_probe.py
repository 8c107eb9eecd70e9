"""The one family probe: every kind from one command line, outcomes told apart by exception type."""

import json

import pytest

pytest.importorskip("transformers")

from gae_workbook.evaluation import probe  # noqa: E402


def test_one_command_line_for_every_kind(tmp_path):
    path = tmp_path / "probe.json"
    argv = ["--kind", "all", "--families", "gpt2", "fuyu", "vit", "--no-progress", "--json", str(path)]
    payload = probe.main(argv)
    assert json.loads(path.read_text()) == json.loads(json.dumps(payload))
    assert set(payload) == {"transformers", "text", "image", "vlm"}
    assert payload["text"]["families"]["gpt2"][0] == "ok"
    assert payload["text"]["families"]["fuyu"][0] == "needs images"  # a TypeError of a vision-language family
    assert payload["image"]["families"] == {"vit": probe.probe_family("vit", "image")}
    assert set(payload["vlm"]["families"]) == {"fuyu"}  # each kind probes the families of its own table


def test_too_big_is_a_type_not_a_message(monkeypatch):
    monkeypatch.setattr(probe, "MAX_PARAMETERS", 10)
    assert probe.probe_family("gpt2")[0] == "too big"
    with pytest.raises(probe.TooBigError):
        probe.tiny_model("gpt2")
