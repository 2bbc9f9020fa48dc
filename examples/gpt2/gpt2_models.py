"""Where the example's GPT-2 comes from: the model hub, a local folder, or a
random initialisation (`--init tiny|small`) with a byte-level BPE tokenizer
trained on the run's own text, so every code path runs without a network.

Shared by generate.py and finetune.py; both import it from this folder.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from tokenizers import ByteLevelBPETokenizer
from transformers import (AutoModelForCausalLM, AutoTokenizer, GPT2Config, GPT2LMHeadModel,
                          PreTrainedModel, PreTrainedTokenizerFast)
from transformers.utils import logging as transformers_logging

# Progress bars redraw one line with carriage returns: noise in a run's saved log.
transformers_logging.disable_progress_bar()

END_OF_TEXT = "<|endoftext|>"


@dataclass(frozen=True)
class InitShape:
    """A GPT-2 architecture to start from random weights."""

    n_layer: int
    n_head: int
    n_embd: int
    n_positions: int
    tokenizer_vocab: int  # merges to learn; a small corpus may stop earlier
    model_vocab: int | None  # embedding rows; None: as many as the tokenizer has


INIT_SHAPES = {
    # A couple of narrow layers: trains for real on a CPU in seconds.
    "tiny": InitShape(n_layer=2, n_head=2, n_embd=64, n_positions=256, tokenizer_vocab=1000, model_vocab=None),
    # GPT-2 small (124M parameters), including its 50,257-row embedding.
    "small": InitShape(n_layer=12, n_head=12, n_embd=768, n_positions=1024, tokenizer_vocab=50257, model_vocab=50257),
}

# What a tokenizer learns from when `--init` has no training file to learn from.
BUILT_IN_TEXT = """\
I told my wife she was drawing her eyebrows too high. She looked surprised.
The early bird might get the worm, but the second mouse gets the cheese.
I used to play piano by ear, but now I use my hands.
Time flies like an arrow; fruit flies like a banana.
A day without sunshine is like, you know, night.
I would tell you a joke about an elevator, but it is an uplifting experience.
The machine learned to write, and then it learned to write jokes.
"""


class ModelUnavailable(Exception):
    """The requested model cannot be loaded; the message says why and what to do."""


def fail(message: str) -> None:
    """End the script with one clear line on stderr, never a traceback."""
    print(f"{Path(sys.argv[0]).name}: {message}", file=sys.stderr)
    raise SystemExit(1)


def train_tokenizer(lines: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer like GPT-2's, learned from `lines`."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(lines, vocab_size=vocab_size, min_frequency=2,
                            special_tokens=[END_OF_TEXT], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=END_OF_TEXT,
                                   eos_token=END_OF_TEXT, unk_token=END_OF_TEXT)


def init_model(kind: str, text_file: str | None) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A randomly initialised GPT-2 of shape `kind` with a tokenizer trained on
    `text_file` (or on a small built-in text when there is none)."""
    shape = INIT_SHAPES[kind]
    if text_file:
        lines = Path(text_file).read_text(encoding="utf-8").splitlines()
    else:
        lines = BUILT_IN_TEXT.splitlines()
    tokenizer = train_tokenizer(lines, shape.tokenizer_vocab)
    tokenizer.model_max_length = shape.n_positions
    end_id = tokenizer.convert_tokens_to_ids(END_OF_TEXT)
    config = GPT2Config(
        vocab_size=max(len(tokenizer), shape.model_vocab or 0),
        n_positions=shape.n_positions, n_embd=shape.n_embd, n_layer=shape.n_layer,
        n_head=shape.n_head, bos_token_id=end_id, eos_token_id=end_id,
    )
    return GPT2LMHeadModel(config), tokenizer


def model_from_args(args) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """The model a script's arguments ask for: a random GPT-2 (`--init`, its
    tokenizer trained on `--train_data_file`) or a pretrained one; one line
    and exit 1 when it cannot be had."""
    try:
        if args.init:
            return init_model(args.init, args.train_data_file)
        return load_pretrained(args.model_name_or_path)
    except ModelUnavailable as error:
        fail(str(error))
    except OSError as error:
        fail(f"cannot read {args.train_data_file}: {error.strerror}")


def load_pretrained(name_or_path: str) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    """A model and tokenizer from a local folder, the local hub cache, or the hub."""
    if Path(name_or_path).is_dir():
        return _load(name_or_path)
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise ModelUnavailable(f"no model folder at {name_or_path}")  # a path, never a hub id
    try:
        return _load(name_or_path, local_files_only=True)
    except OSError:
        pass  # not in the cache: ask the hub below
    _check_hub_reachable(name_or_path)
    try:
        return _load(name_or_path)
    except OSError as error:
        raise ModelUnavailable(f"cannot load {name_or_path!r} from the model hub: {_first_line(error)}") from error


def _load(name_or_path: str, **options) -> tuple[PreTrainedModel, PreTrainedTokenizerFast]:
    tokenizer = AutoTokenizer.from_pretrained(name_or_path, **options)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, **options)
    return model, tokenizer


def _check_hub_reachable(name: str) -> None:
    """Ask the hub once, quickly, before loading: an unreachable hub otherwise
    costs half a minute of retries before transformers gives up."""
    from huggingface_hub import constants, model_info
    from huggingface_hub.errors import HfHubHTTPError

    offline_advice = "to work offline, start from a random GPT-2 with --init tiny or --init small"
    if constants.HF_HUB_OFFLINE:
        raise ModelUnavailable(
            f"{name!r} is neither a local folder nor in the hub cache, and the model hub cannot be "
            f"reached (offline mode: HF_HUB_OFFLINE is set); {offline_advice}")
    try:
        model_info(name, timeout=10)
    except HfHubHTTPError as error:  # the hub answered: the model itself is the problem
        raise ModelUnavailable(f"the model hub has no usable model {name!r}: {_first_line(error)}") from error
    except Exception as error:  # any transport failure means the hub is out of reach
        raise ModelUnavailable(
            f"{name!r} is neither a local folder nor in the hub cache, and the model hub "
            f"({constants.ENDPOINT}) cannot be reached: {_first_line(error)}; {offline_advice}") from error


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
