"""The README's "Explain your own model" section runs as written: every ``python`` block in order, in
one namespace, and its harness command line, on timm, a Hugging Face ViT saved to a directory and a
causal LM with its own tokenizer.

What the README names is made here, offline and small: ``cat.jpg`` and ``dog.jpg``, a random-weight
ViT with a cat/dog ``id2label`` saved to ``my_vit/``, an ImageFolder ``my_images/``, a Llama with a
word-level tokenizer saved to ``my_lm/``; ``timm.create_model`` keeps the named architecture, its
224-pixel input and its ``pretrained_cfg`` but is built narrow and shallow (CPU time). Every shape
comment ``# (2, 196)`` on an expression is checked against the value (letters match any size).
"""

import ast
import re
import shlex
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Explain your own model"
SHAPE = re.compile(r"\(([\w\s,+-]+)\)")


def _section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    return text[start:end]


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", _section(), flags=re.S)


def test_the_section_reads_in_under_50_lines_to_the_harness_table():
    lines = _section().splitlines()
    harness = next(i for i, line in enumerate(lines) if line.startswith("python -m gae_workbook.harness"))
    assert harness < 50, f"the harness command is on line {harness + 1} of the section"
    assert "### Language models" in _section()


def _write_inputs(root: Path) -> None:
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    rng = np.random.default_rng(0)
    for name in ("cat.jpg", "dog.jpg"):
        Image.fromarray(rng.integers(0, 255, (180, 240, 3), dtype=np.uint8)).save(root / name)
    for label in ("cat", "dog"):  # an ImageFolder: one folder per class
        folder = root / "my_images" / label
        folder.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 255, (60, 60, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    torch.manual_seed(0)
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        id2label={0: "cat", 1: "dog"}, label2id={"cat": 0, "dog": 1},
    )  # fmt: skip
    transformers.ViTForImageClassification(config).save_pretrained(root / "my_vit")
    transformers.ViTImageProcessor().save_pretrained(root / "my_vit")  # 224 x 224, mean = std = 0.5

    words = "<pad> <unk> the cat sat on a dog ran mat".split()
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>")
    fast.save_pretrained(root / "my_lm")
    lm_config = transformers.LlamaConfig(
        vocab_size=len(words), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, pad_token_id=0,
    )  # fmt: skip
    transformers.LlamaForCausalLM(lm_config).save_pretrained(root / "my_lm")


def _check_shapes(statement: ast.stmt, source: list[str], namespace: dict) -> int:
    """Checks an expression statement whose comment starts with a shape; returns 1 if checked."""
    comment = source[statement.end_lineno - 1].partition("  # ")[2]
    match = SHAPE.match(comment)
    if not isinstance(statement, ast.Expr) or match is None:
        return 0
    value = eval(compile(ast.Expression(statement.value), "README", "eval"), namespace)
    dims = [d.strip() for d in match.group(1).split(",")]
    assert isinstance(value, torch.Tensor) and value.ndim == len(dims), (ast.unparse(statement), dims)
    for size, dim in zip(value.shape, dims):
        assert not dim.isdigit() or size == int(dim), (ast.unparse(statement), tuple(value.shape), dims)
    return 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_every_snippet_runs_on_timm_hf_and_an_lm(tmp_path, monkeypatch):
    import timm

    _write_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GAE_FIGURES_DIR", raising=False)
    create = timm.create_model

    def narrow(name, **kwargs):  # the named model (input size, pretrained_cfg), narrow and shallow
        return create(name, **{**kwargs, "embed_dim": 48, "depth": 2, "num_heads": 2})

    monkeypatch.setattr(timm, "create_model", narrow)
    namespace: dict = {}
    checked = 0
    blocks = _blocks("python")
    assert len(blocks) == 4  # timm, its figures, HF, LM
    for block in blocks:
        source = block.splitlines()
        for statement in ast.parse(block).body:
            checked += _check_shapes(statement, source, namespace)
            exec(compile(ast.Module([statement], []), "README", "exec"), namespace)
        plt.close("all")
    assert checked == 5  # timm: relevance and heatmap; HF: relevance; LM: relevance, generation

    for name in ("gae", "methods", "hf_gae", "lm", "lm_generation"):
        for suffix in (".png", ".pdf"):
            path = tmp_path / "paper" / f"{name}{suffix}"
            assert path.stat().st_size > 1000, path
    assert "<span" in Path("paper/lm.html").read_text()  # the token page
    prompt, generated = namespace["x"]["input_ids"].shape[1], namespace["out"].shape[1]
    steps = generated - prompt  # T
    assert namespace["gen"].relevance["text"].shape == (2, steps, prompt + steps - 1)
    tokens, x = namespace["exp"].tokens["text"][1], namespace["x"]
    assert len(tokens) == int(x["attention_mask"][1].sum())  # padding removed
    assert Path("runs/exp.safetensors").exists() and Path("runs/exp.json").exists()
    assert namespace["rec"].labels[namespace["rec"].target[0, 0].item()]  # timm: ImageNet names
    assert namespace["lm"].training is False and namespace["exp"].relevance["text"].shape[0] == 2


def test_the_harness_command_runs_on_the_saved_model_and_folder(tmp_path, monkeypatch):
    import json

    from gae_workbook.evaluation import harness

    _write_inputs(tmp_path)
    monkeypatch.chdir(tmp_path)
    (command,) = [line for block in _blocks("bash") for line in block.splitlines() if "gae_workbook.harness" in line]
    args = shlex.split(command)
    assert args[:3] == ["python", "-m", "gae_workbook.harness"]
    harness.main([*args[3:], "--no-progress", "--curve-steps", "4", "--batch-size", "4"])  # fewer steps: CPU time
    results = json.loads(Path("runs/mine/results.json").read_text())["results"]
    assert list(results) == ["gae", "rollout", "attn_gradcam", "random"]
    assert all(row["images"] == 4 and np.isfinite(row["pos_auc_pred"]) for row in results.values())
