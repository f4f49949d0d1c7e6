"""The tiny checkpoint's tokenizer: byte-level BPE trained here on stdlib docstrings, wrapped as Qwen's.

Why not a tokenizer file from the hub: nothing can be downloaded where this project is tested, so
the BPE is trained deterministically in-process (``tokenizers``) and wrapped as ``Qwen2Tokenizer``
with Qwen's special tokens, pre-tokenizer regex and an Instruct-style chat template.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import inspect
import json
import pathlib
from collections.abc import Sequence
from typing import Any

# Qwen's special tokens in Qwen's own order, so that their relative ids mirror the real vocabulary
# (<|endoftext|> first, then the chat and vision markers).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Answer words a reranker may read from the LM head. Each must be ONE token when it directly
# follows "assistant\n" (no leading space), as it does in the chat template.
_LABEL_WORDS_TEXT = (
    "yes no Yes No true false True False YES NO correct wrong right incorrect relevant irrelevant"
)
LABEL_WORDS: tuple[str, ...] = tuple(_LABEL_WORDS_TEXT.split())

# The corpus comes from these modules' docstrings. The list is fixed and sorted, and every module
# ships with every CPython build, so the corpus depends only on the Python version (docstrings are
# edited between releases).
_CORPUS_MODULES_TEXT = """
abc argparse base64 bisect calendar collections contextlib copy csv dataclasses datetime decimal difflib
enum fractions functools glob gzip hashlib heapq html inspect io itertools json logging math operator os
pathlib pickle pprint queue random re shutil statistics string struct tempfile textwrap threading time
urllib.parse uuid warnings zipfile
"""
CORPUS_MODULES: tuple[str, ...] = tuple(sorted(_CORPUS_MODULES_TEXT.split()))

# Everyday English (image captions, queries, documents) so that the demo's text is not tokenized
# byte by byte; it also guarantees a usable corpus under ``python -OO``, which strips docstrings.
_ENGLISH_WORDS_TEXT = """
a an the this that these those is are was were be been being have has had do does did
and or but not if then else when while for with without of in on at by from to into over
under between above below near far up down left right front back top bottom inside
outside image picture photo photograph video document query passage text caption title
question answer relevant irrelevant match matching similar different same retrieval
rerank ranking score search find show shows showing describe description contains
containing about which what who where why how one two three four five six seven eight
nine ten zero first second third last many few some all none each every other another
red green blue yellow black white gray brown orange purple pink dark light bright color
small large big tiny huge long short tall wide narrow round square circle line shape
man woman person people child children boy girl dog cat bird horse car bus train plane
boat bicycle house building street road tree flower grass sky water sea river mountain
table chair bed door window food plate cup bottle book phone computer screen sign
sitting standing walking running playing holding eating looking wearing riding
handwritten digit number letter face faces animal object scene day night snow rain sun
good bad new old young high low hot cold open closed full empty clean dirty happy sad
yes no true false correct wrong right incorrect Yes No True False YES NO
"""
ENGLISH_WORDS: tuple[str, ...] = tuple(sorted(set(_ENGLISH_WORDS_TEXT.split())))

BPE_VOCAB_SIZE = 3000

# Qwen's pre-tokenizer regex (identical to ``transformers.models.qwen2.tokenization_qwen2``), so
# the trained merges see the same pre-tokens the wrapped ``Qwen2Tokenizer`` will produce.
QWEN_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Same semantics as the Qwen2-VL-Instruct template: a default system turn when the conversation
# does not start with one, content parts concatenated with no separator, one
# <|vision_start|><|image_pad|><|vision_end|> per image (the processor later expands the single
# <|image_pad|> to the image's token count), optional "Picture k: " prefixes, videos likewise.
CHAT_TEMPLATE = (
    "{%- set image_count = namespace(value=0) -%}\n"
    "{%- set video_count = namespace(value=0) -%}\n"
    "{%- for message in messages -%}\n"
    "{%- if loop.first and message['role'] != 'system' -%}\n"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' -}}\n"
    "{%- endif -%}\n"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}\n"
    "{%- if message['content'] is string -%}\n"
    "{{- message['content'] -}}\n"
    "{%- else -%}\n"
    "{%- for part in message['content'] -%}\n"
    "{%- if part['type'] == 'image' or 'image' in part or 'image_url' in part -%}\n"
    "{%- set image_count.value = image_count.value + 1 -%}\n"
    "{%- if add_vision_id -%}{{- 'Picture ' + image_count.value|string + ': ' -}}{%- endif -%}\n"
    "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}\n"
    "{%- elif part['type'] == 'video' or 'video' in part -%}\n"
    "{%- set video_count.value = video_count.value + 1 -%}\n"
    "{%- if add_vision_id -%}{{- 'Video ' + video_count.value|string + ': ' -}}{%- endif -%}\n"
    "{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}\n"
    "{%- elif 'text' in part -%}\n"
    "{{- part['text'] -}}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- endif -%}\n"
    "{{- '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "{{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}\n"
)


def _module_docstrings(module_name: str) -> list[str]:
    """Docstrings of a module and its public top-level functions and classes, names sorted.

    Python sources are read with ``ast`` rather than imported: an imported module's namespace
    depends on what else the process imported (monkeypatching, lazy attributes), its source does
    not. Modules written in C (``math``, ``itertools``, ...) have no source and are introspected.
    """
    spec = importlib.util.find_spec(module_name)
    # Frozen stdlib modules (os, io, ...) report origin "frozen"; their file is in loader_state.
    origin = getattr(spec.loader_state, "filename", None) if spec.origin == "frozen" else spec.origin
    if origin and origin.endswith(".py"):
        tree = ast.parse(pathlib.Path(origin).read_text(encoding="utf-8"))
        nodes = {
            node.name: node
            for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            and not node.name.startswith("_")
        }
        docs = [ast.get_docstring(tree)] + [ast.get_docstring(nodes[name]) for name in sorted(nodes)]
    else:
        module = importlib.import_module(module_name)
        objects = [
            obj
            for name, obj in sorted(vars(module).items())
            if not name.startswith("_") and (inspect.isbuiltin(obj) or inspect.isclass(obj))
        ]
        docs = [module.__doc__] + [
            inspect.cleandoc(obj.__doc__) for obj in objects if isinstance(obj.__doc__, str)
        ]
    return [doc for doc in docs if doc and doc.strip()]


def build_corpus() -> list[str]:
    """Deterministic training text for the tokenizer.

    Returns:
        Docstrings of the public functions and classes defined in :data:`CORPUS_MODULES` (modules
        and names sorted), followed by the fixed word list and repeated label words.
    """
    texts: list[str] = []
    for module_name in CORPUS_MODULES:
        texts.extend(_module_docstrings(module_name))
    texts.append(" ".join(ENGLISH_WORDS))
    # Repetition makes the label words frequent enough that BPE merges them whole, both at the
    # start of a line (after "assistant\n") and after a space.
    for word in LABEL_WORDS:
        texts.extend([f"{word}\n{word} {word}. {word}"] * 20)
    return texts


@functools.lru_cache(maxsize=1)
def _train_bpe() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """Train the byte-level BPE once per process.

    Returns:
        ``(vocab items sorted by id, merges in priority order)`` as immutable tuples, so the cached
        value cannot be mutated by callers.
    """
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE

    tokenizer = Tokenizer(BPE())
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=2,
        # All 256 byte symbols, so any text (and any byte) stays encodable.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(build_corpus(), trainer=trainer)
    model = json.loads(tokenizer.to_str())["model"]
    vocab = tuple(sorted(model["vocab"].items(), key=lambda item: item[1]))
    merges = tuple(_merge_pair(m) for m in model["merges"])
    vocab, merges = _ensure_single_tokens(vocab, merges, LABEL_WORDS)
    return vocab, merges


def _merge_pair(merge: str | list[str]) -> tuple[str, str]:
    """A merge of ``tokenizer.json`` (``"a b"`` in older files, ``["a", "b"]`` in newer) as a pair."""
    left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
    return left, right


def _byte_level(text: str) -> str:
    """Map text to the printable byte-level alphabet used in the BPE vocabulary (GPT-2 scheme)."""
    from tokenizers import pre_tokenizers

    pieces = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(text)
    return "".join(piece for piece, _ in pieces)


def _ensure_single_tokens(
    vocab: tuple[tuple[str, int], ...],
    merges: tuple[tuple[str, str], ...],
    words: Sequence[str],
) -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """Append lowest-priority merges so that each word encodes to a single token.

    The corpus normally makes BPE learn the words; this is the guarantee for corpora where it does
    not (another Python version, ``-OO``). New merges go last, so no existing tokenization changes
    except that of the words (and strings containing exactly that piece sequence).

    Args:
        vocab: ``(token, id)`` pairs sorted by id, ids contiguous from 0.
        merges: Merge pairs in priority order.
        words: Words that must become single tokens.

    Returns:
        The extended ``(vocab, merges)``.
    """
    from tokenizers.models import BPE

    vocab_dict = dict(vocab)
    merge_list = list(merges)
    for word in words:
        token = _byte_level(word)
        # Merging only the leftmost pair per round (and re-tokenizing) stays correct when the new
        # merge also fires elsewhere in the word, e.g. on repeated letters.
        while len(pieces := BPE(vocab=vocab_dict, merges=merge_list).tokenize(token)) > 1:
            left, right = pieces[0].value, pieces[1].value
            merge_list.append((left, right))
            vocab_dict.setdefault(left + right, len(vocab_dict))
    return tuple(sorted(vocab_dict.items(), key=lambda item: item[1])), tuple(merge_list)


def build_tokenizer() -> Any:
    """Build the tiny Qwen tokenizer (BPE + Qwen special tokens + chat template).

    Returns:
        A ``transformers.Qwen2Tokenizer`` with left padding, ``<|endoftext|>`` as pad token and
        ``<|im_end|>`` as eos token (as in the Qwen-VL Instruct checkpoints), the special tokens
        appended after the BPE vocabulary in Qwen's order, and :data:`CHAT_TEMPLATE`.
    """
    from transformers import Qwen2Tokenizer

    vocab, merges = _train_bpe()
    # eos starts as <|endoftext|> so that the constructor registers <|endoftext|> first; the
    # remaining specials then follow in Qwen's order and eos is switched to <|im_end|> below.
    tokenizer = Qwen2Tokenizer(
        vocab=dict(vocab),
        merges=list(merges),  # type: ignore[arg-type]  # annotated list[str]; the BPE model takes pairs
        unk_token=None,  # type: ignore[arg-type]  # annotated str; Qwen2 has no unknown token (bytes cover all)
        eos_token=SPECIAL_TOKENS[0],
        pad_token=SPECIAL_TOKENS[0],
        extra_special_tokens=list(SPECIAL_TOKENS[1:]),
        padding_side="left",
        model_max_length=32768,
    )
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    expected = list(range(len(vocab), len(vocab) + len(SPECIAL_TOKENS)))
    if ids != expected:
        raise RuntimeError(f"special tokens got ids {ids}, expected {expected}")
    return tokenizer
