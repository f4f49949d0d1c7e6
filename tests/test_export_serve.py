"""Serving forms of an export (issue 20) and exports checked on load (issue 23, item 8).

A tiny text-only Llama with SmolLM2's ChatML template, trained two steps on a text training set,
exported as the default folder (also a sentence-transformers CrossEncoder) and as ``--format seq-cls``.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from lightning_modules import export as export_cli
from lightning_modules.export import check_format, export
from lightning_modules.export_integrity import CHECKSUMS, ExportIntegrityError, record_checksums
from lightning_modules.export_serve import ServeFormatError
from lightning_modules.inference import Reranker
from tests.serve_helpers import INSTRUCTION, fit_text_checkpoint, write_text_groups
from tests.tiny_llama import build_llama

QUERY = "what colour is the car"
DOCUMENTS = ["The car is red.", "The sky is blue.", "Anna wrote the letter on a long and rainy afternoon."]
OTHER = "Find the document that matches the query."


pytestmark = pytest.mark.usefixtures("umask_022")  # exports get the modes an ordinary umask gives


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    base = build_llama(root / "llama")
    train = write_text_groups(root / "train")
    return root, base, train, fit_text_checkpoint(root, base, train)


@pytest.fixture(scope="module")
def default_export(trained):
    root, _, _, ckpt = trained
    return export(ckpt, root / "export")


@pytest.fixture(scope="module")
def seq_cls_export(trained):
    root, _, _, ckpt = trained
    return export(ckpt, root / "seq-cls", fmt="seq-cls")


def crossencoder(folder):
    from sentence_transformers import CrossEncoder

    return CrossEncoder(str(folder), device="cpu", model_kwargs={"dtype": torch.float32})


def raw(model, pairs, **kwargs) -> torch.Tensor:
    return torch.as_tensor(model.predict(pairs, activation_fn=torch.nn.Identity(), **kwargs)).float()


def test_default_export_is_a_crossencoder_that_scores_like_reranker(default_export):
    config = json.loads((default_export / "rerank_config.json").read_text())
    reranker = Reranker.from_pretrained(default_export, device="cpu")
    yes, no = reranker.scorer.label_token_ids.tolist()
    assert json.loads((default_export / "1_LogitScore" / "config.json").read_text())["true_token_id"] == yes
    assert json.loads((default_export / "1_LogitScore" / "config.json").read_text())["false_token_id"] == no
    assert config["default_instruction"] == INSTRUCTION  # the training data's, not a generic one
    assert config["parity"]["crossencoder_max_abs_diff"] <= 1e-5
    model = crossencoder(default_export)
    pairs = [(QUERY, d) for d in DOCUMENTS]
    for instruction, kwargs in ((None, {}), (OTHER, {"prompt": OTHER})):
        want = torch.tensor(reranker.score(QUERY, DOCUMENTS, instruction=instruction))
        got = raw(model, pairs, **kwargs)
        assert (got - want).abs().max() <= 1e-5, (instruction, got, want)
    # The instruction reaches the prompt: another one gives other scores.
    assert (raw(model, pairs) - raw(model, pairs, prompt=OTHER)).abs().max() > 1e-4
    card = (default_export / "README.md").read_text()
    assert 'CrossEncoder("path/to/this/folder")' in card and "--format seq-cls" in card
    # sentence-transformers' default activation is the sigmoid of the same score.
    assert torch.allclose(torch.as_tensor(model.predict(pairs)), torch.sigmoid(raw(model, pairs)), atol=1e-6)


def test_judge_template_renders_the_pair_as_the_training_chat(default_export):
    """CrossEncoder's tokens of a pair (roles query/document, the prompt as a system message) are
    rerank-lab's own encoding of the judge chat, ending with the assistant prompt."""
    from lightning_modules.inference import as_doc

    model = crossencoder(default_export)
    reranker = Reranker.from_pretrained(default_export, device="cpu")
    features = model.preprocess([(QUERY, DOCUMENTS[0])], prompt=OTHER)
    pair = reranker.encoder.encode(OTHER, as_doc(QUERY), as_doc(DOCUMENTS[0]))
    assert features["input_ids"][0].tolist() == pair.input_ids
    rendered = model.tokenizer.decode(features["input_ids"][0])
    assert rendered.endswith("<|im_start|>assistant\n") and f"<Instruct>: {OTHER}<Query>:{QUERY}" in rendered


def test_seq_cls_export_scores_like_reranker(default_export, seq_cls_export):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    config = AutoConfig.from_pretrained(seq_cls_export)
    assert config.architectures == ["LlamaForSequenceClassification"] and config.num_labels == 1
    reranker = Reranker.from_pretrained(default_export, device="cpu")
    want = torch.tensor(reranker.score(QUERY, DOCUMENTS))
    # plain transformers: the folder's tokenizer renders the (query, document) roles via its template
    tokenizer = AutoTokenizer.from_pretrained(seq_cls_export)
    model = AutoModelForSequenceClassification.from_pretrained(seq_cls_export, dtype=torch.float32).eval()
    got = []
    for document in DOCUMENTS:
        messages = [{"role": "query", "content": QUERY}, {"role": "document", "content": document}]
        ids = tokenizer.apply_chat_template(messages, tokenize=True, return_tensors="pt", return_dict=True)
        with torch.no_grad():
            got.append(model(**ids).logits[0, 0].item())
    assert (torch.tensor(got) - want).abs().max() <= 1e-5
    assert (raw(crossencoder(seq_cls_export), [(QUERY, d) for d in DOCUMENTS]) - want).abs().max() <= 1e-5
    # the head is the yes row minus the no row of the trained (label_rows-folded) LM head
    head = load_file(str(default_export / "model.safetensors"))
    yes, no = reranker.scorer.label_token_ids.tolist()
    lm_head = head["lm_head.weight"]
    assert torch.allclose(
        load_file(str(seq_cls_export / "model.safetensors"))["score.weight"][0], lm_head[yes] - lm_head[no]
    )
    with pytest.raises(ValueError, match="seq-cls export"):
        Reranker.from_pretrained(seq_cls_export, device="cpu")
    card = (seq_cls_export / "README.md").read_text()
    assert "vllm serve path/to/this/folder --runner pooling" in card and "/rerank" in card
    assert "AutoModelForCausalLM" not in card and "## Form" in card


def test_cl_score_writes_the_yes_logit_alone(trained, tmp_path):
    root, base, train, _ = trained
    ckpt = fit_text_checkpoint(tmp_path, base, train, objective="cl")
    folder = export(ckpt, tmp_path / "cl")
    assert json.loads((folder / "1_LogitScore" / "config.json").read_text())["false_token_id"] is None
    want = torch.tensor(Reranker.from_pretrained(folder, device="cpu").score(QUERY, DOCUMENTS))
    assert (raw(crossencoder(folder), [(QUERY, d) for d in DOCUMENTS]) - want).abs().max() <= 1e-5


@pytest.mark.parametrize(
    ("objective_args", "reason"),
    [
        ({"weight": "sft", "direction": "projection"}, "projection"),
        ({"weight": "sft", "direction": "multi_token"}, "several label tokens"),
    ],
)
def test_seq_cls_refuses_scores_it_cannot_express(trained, objective_args, reason):
    _, base, _, _ = trained
    with pytest.raises(ServeFormatError, match=reason) as caught:
        check_format(
            "seq-cls", {"objective": "url", "objective_args": objective_args}, str(base), False, "x.ckpt"
        )
    assert "\n" not in str(caught.value) and "--format seq-cls refused for x.ckpt" in str(caught.value)


def test_seq_cls_refuses_a_vision_language_backbone(tiny_model_dir):
    with pytest.raises(ServeFormatError, match="qwen2_vl"):
        check_format("seq-cls", {"objective": "sft"}, str(tiny_model_dir), False, "x.ckpt")


# ---- checked on load (issue 23, item 8) --------------------------------------------------------


@pytest.fixture
def copy(default_export, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(default_export, folder)
    return folder


def test_checksums_cover_every_file(default_export):
    listed = {line.split("  ", 1)[1] for line in (default_export / CHECKSUMS).read_text().splitlines()}
    present = {p.relative_to(default_export).as_posix() for p in default_export.rglob("*") if p.is_file()}
    assert (
        listed == present - {CHECKSUMS}
        and "model.safetensors" in listed
        and "1_LogitScore/config.json" in listed
    )


def test_an_edited_objective_is_refused_unless_verification_is_off(copy):
    path = copy / "rerank_config.json"
    config = json.loads(path.read_text())
    path.write_text(json.dumps({**config, "objective": "cl"}, indent=2) + "\n")
    with pytest.raises(ExportIntegrityError, match="rerank_config.json: its SHA-256 differs") as caught:
        Reranker.from_pretrained(copy, device="cpu")
    assert "\n" not in str(caught.value) and "verify=False" in str(caught.value)
    assert Reranker.from_pretrained(copy, device="cpu", verify=False).config["objective"] == "cl"


def test_same_size_overwritten_weights_are_refused(copy):
    path = copy / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-8:] = bytes(8)  # last float32 values zeroed: same size, still loadable
    path.write_bytes(bytes(data))
    with pytest.raises(ExportIntegrityError, match="model.safetensors"):
        Reranker.from_pretrained(copy, device="cpu")


def test_truncated_weights_give_one_line_and_exit_2_in_evaluate(copy, demo_dir, capsys):
    from experiments import evaluate

    path = copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    args = ["--data", str(demo_dir / "mrb"), "--model", str(copy), "--device", "cpu"]
    assert evaluate.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model.safetensors" in err and "Traceback" not in capsys.readouterr().err
    # without the checksum check the truncated file is still named, in one line
    assert evaluate.main([*args, "--no-verify"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model.safetensors: not a readable safetensors file" in err


def test_a_non_json_config_names_the_file(copy):
    (copy / "rerank_config.json").write_text("{objective: sft")
    record_checksums(copy)
    with pytest.raises(ValueError, match=r"rerank_config.json: not valid JSON"):
        Reranker.from_pretrained(copy, device="cpu")


def test_score_head_outside_the_folder_is_refused(copy, tmp_path):
    config = json.loads((copy / "rerank_config.json").read_text())
    (copy / "rerank_config.json").write_text(json.dumps({**config, "score_head": "../outside.safetensors"}))
    with pytest.raises(ValueError, match="score_head '../outside.safetensors' must name a file inside"):
        Reranker.from_pretrained(copy, device="cpu", verify=False)


def test_export_out_on_a_symlink(trained, tmp_path, capsys):
    _, _, _, ckpt = trained
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("user data")
    link = tmp_path / "link"
    link.symlink_to(full)
    assert export_cli.main(["--ckpt", str(ckpt), "--out", str(link)]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        len(err.splitlines()) == 1
        and "symbolic link" in err
        and (full / "keep.txt").read_text() == "user data"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "to-empty").symlink_to(empty)
    assert export_cli.main(["--ckpt", str(ckpt), "--out", str(tmp_path / "to-empty")]) == 0
    assert (empty / CHECKSUMS).is_file() and (tmp_path / "to-empty").is_symlink()


@pytest.mark.slow
def test_smollm2_export_loads_as_crossencoder_and_seq_cls_with_reranker_scores(tmp_path):
    """The real SmolLM2-135M (fetched once into the cache), 4 LoRA steps, both exports (what
    `make serve-check` prepares): CrossEncoder on each folder and AutoModelForSequenceClassification
    on the seq-cls one equal Reranker in fp32 on 24 pairs, to 1e-4: the float32 floor of this 30-layer
    model between the two GEMM paths is 1e-5 to 3e-5 (experiments/bench/serve_check.py)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from experiments.bench.serve_check import prepare

    default, seq_cls, pairs = prepare(tmp_path)
    reranker = Reranker.from_pretrained(default, device="cpu")
    tokenizer = AutoTokenizer.from_pretrained(seq_cls)
    classifier = AutoModelForSequenceClassification.from_pretrained(seq_cls, dtype=torch.float32).eval()
    models = [crossencoder(default), crossencoder(seq_cls)]
    for query, documents in pairs[:3]:
        want = torch.tensor(reranker.score(query, documents))
        for model in models:
            assert (raw(model, [(query, d) for d in documents]) - want).abs().max() <= 1e-4
        roles = [[{"role": "query", "content": query}, {"role": "document", "content": d}] for d in documents]
        tokenizer.padding_side = "left"
        batch = tokenizer.apply_chat_template(
            roles, tokenize=True, padding=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            got = classifier(**batch).logits[:, 0]
        assert (got - want).abs().max() <= 1e-4
