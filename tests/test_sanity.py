"""Cascading model randomisation (Adebayo et al. 2018)."""

import json
import math

import torch
from conftest import tiny_timm_vit

from gae_workbook.evaluation.sanity import cascade_stages, cascading_randomisation, gae_method, randomise, spearman


def test_spearman_known_values():
    a = torch.arange(6.0).reshape(2, 3)
    rho = spearman(torch.cat([a, a[:1]]), torch.cat([a * 2, -a[:1]]))
    torch.testing.assert_close(rho, torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64))
    assert math.isnan(spearman(torch.ones(1, 4), torch.arange(4.0)[None])[0])


def test_randomise_resets_named_modules_only():
    model = tiny_timm_vit()
    model.norm.weight.data.fill_(3.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    randomise(model, ["head", "norm", "pos_embed"])
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"head.weight", "head.bias", "norm.weight", "pos_embed"}
    assert torch.equal(model.norm.weight, torch.ones(32))  # LayerNorm back to its initialisation, not zeros


def test_cascade_leaves_model_unchanged_and_maps_decorrelate(images):
    model = tiny_timm_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    methods = {"gae": gae_method("gae"), "rollout": gae_method("rollout")}
    results = cascading_randomisation(model, images, methods, progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    stages = [f"+{name}" for name, _ in cascade_stages(model)]
    assert list(results["gae"]) == stages == ["+head", "+block 2", "+block 1", "+block 0", "+embeddings"]
    assert results["rollout"]["+head"] == 1.0  # rollout never reads the classifier: it fails this stage
    assert results["gae"]["+head"] < 1.0
    assert abs(results["gae"]["+embeddings"]) < 0.5


def test_hf_vit_cascade_names_exist():
    from conftest import tiny_hf_vit

    model = tiny_hf_vit()
    names = {n for n, _ in model.named_modules()} | {n for n, _ in model.named_parameters()}
    stages = cascade_stages(model)
    assert [s for s, _ in stages] == ["head", "block 2", "block 1", "block 0", "embeddings"]
    assert all(any(n in names for n in group) for _, group in stages)


def test_cli_writes_json_without_progress(tmp_path, capsys):
    from gae_workbook.evaluation import sanity

    path = tmp_path / "sanity.json"
    results = sanity.main(["--n", "3", "--methods", "gae", "rollout", "--json", str(path), "--no-progress"])
    assert json.loads(path.read_text()) == results
    assert list(results) == ["gae", "rollout"] and list(results["gae"])[0] == "+head"
    assert "randomise" not in capsys.readouterr().err  # no progress bar
