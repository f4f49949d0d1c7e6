"""Backbone loading and label-token scoring.

One loading path for every checkpoint, a hub id or a local folder (real Qwen-VL weights and the
tiny test models alike): ``AutoModelForImageTextToText`` for multimodal checkpoints, falling back
to ``AutoModelForCausalLM`` for text-only ones. Remote code is never trusted unless the config
says so, and weights are read from safetensors only.

Scoring never materialises vocabulary logits: the decoder's last hidden state at the answer
position (index -1 of a left-padded batch) is multiplied by the LM-head rows of the label tokens
only (docs/science.md §1: z_y = M_y·h, z_n = M_n·h), in fp32.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from transformers import PreTrainedConfig

log = logging.getLogger(__name__)

LM_HEAD_MODES = ("frozen", "label_rows", "full")
DTYPES = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}


def load_backbone(
    name_or_path: str,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    attn_implementation: str = "sdpa",
    quantization: str | None = None,
) -> nn.Module:
    """Load a generative backbone (with its LM head) from a hub id or a local folder.

    Args:
        name_or_path: hub id (``Qwen/Qwen2.5-VL-3B-Instruct``) or folder.
        dtype: ``float32``, ``bfloat16``, ``float16`` or ``float64``.
        trust_remote_code: run code shipped with the checkpoint. Off unless a config turns it on.
        attn_implementation: ``sdpa`` (default), ``eager`` or ``flash_attention_2``.
        quantization: ``None`` or ``"4bit"`` (QLoRA through bitsandbytes, NF4 with bf16 compute).
    """
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    if dtype not in DTYPES:
        raise ValueError(f"model dtype {dtype!r} is not one of {sorted(DTYPES)}")
    check_attn_implementation(attn_implementation)
    kwargs: dict = {
        "dtype": DTYPES[dtype],
        "trust_remote_code": trust_remote_code,
        "attn_implementation": attn_implementation,
        "use_safetensors": True,
    }
    if quantization == "4bit":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
            # Quantise the language model only: the vision tower is small and sensitive, and the
            # LM head is read for two rows. (Patterns match from the start of the module path.)
            llm_int8_skip_modules=["lm_head", r".*visual", r".*vision_tower"],
        )
    elif quantization is not None:
        raise ValueError(f"quantization {quantization!r} is not supported; use null or '4bit'")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one bar per weight file clutters logs of multi-GPU runs
    config = backbone_config(name_or_path, trust_remote_code)
    has_vision = getattr(config, "vision_config", None) is not None
    auto_class = AutoModelForImageTextToText if has_vision else AutoModelForCausalLM
    return auto_class.from_pretrained(name_or_path, **kwargs)


def check_attn_implementation(name: str) -> None:
    """Refuse an attention implementation this machine cannot run, before any weights load.

    ``flash_attention_2`` needs the flash-attn package (CUDA builds only); without it transformers
    would fail only after reading the config, with a message that does not name the setting. Other
    names (``sdpa``, ``eager``, ...) are left to transformers, which lists the valid ones.

    Raises:
        ValueError: naming ``model.attn_implementation`` and what to do.
    """
    import importlib.util

    if name == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ValueError(
            "model.attn_implementation 'flash_attention_2' needs the flash-attn package, which is not "
            "installed here: install it on a CUDA machine (pip install flash-attn --no-build-isolation) "
            "or set model.attn_implementation to 'sdpa' (the default; same scores)"
        )


def label_words(objective) -> list[str]:
    """Label words whose logits are read, in LabelScorer column order: yes, no, then the
    objective's extra positive and negative words, duplicates dropped."""
    positive, negative = objective.label_tokens
    return list(dict.fromkeys(["yes", "no", *positive, *negative]))


def label_token_id(tokenizer, word: str) -> int:
    """The vocabulary id whose logit stands for a label word at the answer position.

    A word that is one token gives that token. A word the tokenizer splits (SmolLM2 writes
    ``irrelevant`` as ``ir`` + ``relevant``) gives its FIRST token, the one the model must emit to
    start answering with the word, and a warning says so; :class:`LabelScorer` refuses two label
    words that end up on the same id. Text is tokenised exactly as it follows ``assistant\n`` in
    the chat (no leading space, no special tokens).
    """
    ids = tokenizer(word, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    if not ids:
        raise ValueError(f"label word {word!r} encodes to no token in this tokenizer")
    if len(ids) > 1:
        pieces = tokenizer.convert_ids_to_tokens(ids)
        log.warning(
            "label word %r is %d tokens in this tokenizer (%s); its first token %r is read",
            word,
            len(ids),
            pieces,
            pieces[0],
        )
    return ids[0]


# LoRA on the language model: the Qwen-VL layout (``model.language_model.layers.N...``) and plain
# causal LMs (Llama, SmolLM2, Qwen2/3, Mistral: ``model.layers.N.self_attn|mlp...``).
LANGUAGE_MODEL_LORA_TARGET = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
CAUSAL_LM_LORA_TARGET = (
    r"(?:.*\.)?layers\.\d+\.(?:self_attn|mlp)\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
)


def lora_target_for(model: nn.Module, target: str, default: str = LANGUAGE_MODEL_LORA_TARGET) -> str:
    """The LoRA target regex to use on ``model``.

    A ``target`` set by the user is kept as it is. The default (the Qwen-VL ``language_model``
    regex) is swapped for the plain causal-LM one when the model has no ``language_model``
    submodule, so text-only checkpoints get LoRA on their decoder layers without a config change.

    Raises:
        ValueError: the default applies but neither layout matches; names the linear layers found.
    """
    if target != default:
        return target
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    for candidate in (default, CAUSAL_LM_LORA_TARGET):
        if any(re.fullmatch(candidate, name) for name in names):
            return candidate
    raise ValueError(
        "model.lora_target: the default regex matches no layer of this model; set model.lora_target to a "
        f"regex over its linear layers, e.g. some of: {', '.join(names[:6])}"
    )


# LoRA on the vision tower's attention and MLP linears across Qwen2-VL, Qwen2.5-VL and Qwen3-VL naming.
VISION_LORA_TARGET = r".*visual\.blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2|gate_proj|up_proj|down_proj|linear_fc1|linear_fc2))"
MERGER_NAMES = ("visual.merger", "visual.deepstack_merger")


@dataclass(frozen=True)
class TrainableSpec:
    """What of a loaded backbone trains (``RerankerModule``'s ``lora_*`` and ``train_merger``)."""

    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    lora_target: str = LANGUAGE_MODEL_LORA_TARGET
    lora_vision: bool = False
    train_merger: bool = False


def backbone_config(name_or_path: str, trust_remote_code: bool = False):
    """The checkpoint's ``config.json`` (no weights read)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)


def text_hidden_size(config) -> int:
    """The hidden size the LM head reads (the language model's, for multimodal configs)."""
    return int(config.get_text_config().hidden_size)


def set_trainable(model: nn.Module, spec: TrainableSpec, name_or_path: str) -> None:
    """Freeze ``model`` and make trainable what ``spec`` asks for, in place.

    ``lora_r == 0`` trains the whole backbone. Otherwise LoRA adapters (peft) go on the modules
    matching ``lora_target`` (the plain causal-LM layout when the default matches nothing, see
    :func:`lora_target_for`) and, with ``lora_vision``, the vision tower's linears; ``train_merger``
    trains the vision-language merger in full. Trainable weights are then float32 (:func:`upcast_trainables`).

    Raises:
        ValueError: the target matches no module, or there is no merger to train; names the key.
    """
    model.requires_grad_(False)
    if spec.lora_r <= 0:
        model.requires_grad_(True)
        return
    from peft import LoraConfig, inject_adapter_in_model

    lora_target = lora_target_for(model, spec.lora_target, LANGUAGE_MODEL_LORA_TARGET)
    target = f"(?:{lora_target})|(?:{VISION_LORA_TARGET})" if spec.lora_vision else lora_target
    config = LoraConfig(
        r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout, target_modules=target
    )
    try:
        inject_adapter_in_model(config, model)
    except ValueError as err:
        raise ValueError(
            f"model.lora_target {lora_target!r} matched no module of {name_or_path}: {err}"
        ) from None
    if spec.train_merger:
        merger = [p for n, p in model.named_parameters() if any(m in n for m in MERGER_NAMES)]
        if not merger:
            raise ValueError(f"model.train_merger: {name_or_path} has no vision merger")
        for param in merger:
            param.requires_grad_(True)
    upcast_trainables(model)


def upcast_trainables(module: nn.Module) -> None:
    """Trainable half-precision weights become float32: a bf16 weight would swallow small Adam
    updates late in the schedule, while the frozen base still computes in half precision."""
    for param in module.parameters():
        if param.requires_grad and param.dtype in (torch.bfloat16, torch.float16):
            param.data = param.data.float()


@dataclass
class Scores:
    """Label-token logits and the answer-position hidden state of a batch of pairs."""

    label_logits: torch.Tensor  # [n, K] fp32; columns follow the label token ids (yes, no, ...)
    hidden: torch.Tensor  # [n, H] last hidden state at the answer position


def text_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that start at 0 on each row's first real token (left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class LabelScorer(nn.Module):
    """Computes z for a set of label tokens from the decoder, reading only their LM-head rows.

    Args:
        model: a ``*ForConditionalGeneration`` / ``*ForCausalLM`` model (possibly LoRA-wrapped in
            place by peft; the module tree is the same).
        label_token_ids: vocabulary ids whose logits are needed; the first two are yes and no.
        lm_head: ``frozen`` (default), ``label_rows`` (train an offset on the label rows only) or
            ``full`` (the head weight trains; still only its label rows are multiplied). The
            paper's LM-head unfreezing probe (docs/science.md §4).
    """

    label_token_ids: torch.Tensor  # a buffer (declared for the type checker)
    row_delta: nn.Parameter | None

    def __init__(self, model: nn.Module, label_token_ids: list[int], lm_head: str = "frozen") -> None:
        super().__init__()
        if lm_head not in LM_HEAD_MODES:
            raise ValueError(f"model.lm_head {lm_head!r} is not one of {LM_HEAD_MODES}")
        if len(set(label_token_ids)) != len(label_token_ids):
            raise ValueError(
                f"label token ids {label_token_ids} repeat an id: two label words share a (first) token in "
                "this tokenizer; choose label words that start with different tokens"
            )
        self.model = model
        self.register_buffer(
            "label_token_ids", torch.tensor(label_token_ids, dtype=torch.long), persistent=False
        )
        head = self.lm_head
        head.weight.requires_grad_(lm_head == "full")
        # "label_rows": a trainable offset on the label rows only, so the (possibly huge, possibly
        # tied) head stays frozen and checkpoints hold K x H extra numbers.
        self.row_delta = (
            nn.Parameter(torch.zeros(len(label_token_ids), head.weight.shape[1], dtype=torch.float32))
            if lm_head == "label_rows"
            else None
        )

    @property
    def decoder(self) -> nn.Module:
        return cast(nn.Module, self.model.model)

    @property
    def config(self) -> PreTrainedConfig:
        """The backbone's ``config`` (a ``transformers`` model's)."""
        return cast("PreTrainedConfig", self.model.config)

    @property
    def lm_head(self) -> nn.Linear:
        return self.model.get_output_embeddings()

    def forward(self, batch: dict[str, torch.Tensor]) -> Scores:
        attention_mask = batch["attention_mask"]
        if not bool(attention_mask[:, -1].all()):
            raise ValueError("batches must be left padded: the answer position is the last column")
        inputs = {key: value for key, value in batch.items() if key != "image_counts"}
        if "image_grid_thw" not in inputs and "position_ids" not in inputs:
            # Text-only batches: without explicit positions some VLMs count from the first (padding)
            # column, so a left-padded row would see different rotary positions than it would alone.
            inputs["position_ids"] = text_position_ids(attention_mask)
        out = self.decoder(**inputs, use_cache=False, return_dict=True)
        hidden = out.last_hidden_state[:, -1]
        head = self.lm_head
        dtype = torch.promote_types(hidden.dtype, torch.float32)  # fp32, or fp64 for fp64 models
        rows = head.weight[self.label_token_ids].to(dtype)
        if self.row_delta is not None:
            rows = rows + self.row_delta
        # Outside autocast: under bf16-mixed the product would otherwise come back in bf16.
        with torch.autocast(hidden.device.type, enabled=False):
            logits = hidden.to(dtype) @ rows.T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[self.label_token_ids].to(dtype)
        return Scores(label_logits=logits, hidden=hidden)
