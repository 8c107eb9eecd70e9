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


def test_a_reason_is_its_whole_first_sentence_wrapped_never_cut():
    outcome, detail = probe.probe_family("mamba")  # the case: cut at "... Supported families:"
    assert outcome in ("not routed", "mixes tokens")
    assert detail.endswith(".") and "MambaForCausalLM" in detail and "Supported" not in detail
    text = "GAE needs " + "softmax attention maps, " * 12 + "e.g. in ViT 5.25 and BERT. A second sentence."
    sentence = probe.first_sentence(text)
    assert sentence == text[: text.index(" A second")]  # "e.g." and "5.25" end no sentence
    line = probe.format_line("text", "mamba", "refused", sentence, width=90)
    assert len(line.splitlines()) > 2 and all(len(row) <= 90 for row in line.splitlines())
    assert " ".join(line.split()[3:]) == sentence  # wrapped, every word kept
    assert line.splitlines()[1].startswith(" " * 47)  # continued under the reason column


def test_help_shows_defaults_and_every_option_has_help():
    parser = probe.build_parser()
    assert all(action.help for action in parser._actions if action.option_strings)
    assert "(default: text)" in parser.format_help() and "hide the progress bar" in parser.format_help()


def test_a_convolutional_family_is_said_to_have_no_attention():
    outcome, detail = probe.probe_family("convnext", "image")
    assert outcome == "no attention"
    assert "is a convolutional network" in detail and detail.endswith(".")
    assert probe.probe_family("vit", "image")[0] == "ok"  # an attention model is still probed
