"""Generate text with GPT-2: from the model hub (`--model_name_or_path gpt2`),
from a local folder such as finetune.py's output, or from a randomly
initialised GPT-2 when there is no network (`--init tiny|small`).

    python generate.py --model_name_or_path=output --length=70 --prompt=' '
"""

from __future__ import annotations

import argparse

import torch
from transformers import set_seed

from gpt2_models import INIT_SHAPES, fail, model_from_args


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--model_name_or_path", default="gpt2",
                        help="a model hub name or a local folder (default: gpt2)")
    source.add_argument("--init", choices=sorted(INIT_SHAPES),
                        help="start from a randomly initialised GPT-2 of this size instead (offline)")
    parser.add_argument("--train_data_file",
                        help="with --init: the text the tokenizer learns from (default: a small built-in text)")
    parser.add_argument("--prompt", default="", help="text to continue (default: start from nothing)")
    parser.add_argument("--length", type=int, default=20, help="number of tokens to generate")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--top_k", type=int, default=0, help="sample from the k likeliest tokens (0: all)")
    parser.add_argument("--top_p", type=float, default=0.9, help="nucleus sampling probability mass")
    parser.add_argument("--num_return_sequences", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if args.length < 1 or args.num_return_sequences < 1:
        parser.error("--length and --num_return_sequences must be at least 1")
    if args.temperature <= 0 or not 0 < args.top_p <= 1 or args.top_k < 0:
        parser.error("need --temperature > 0, 0 < --top_p <= 1 and --top_k >= 0")
    return args


def main() -> None:
    args = parse_args()
    set_seed(args.seed)
    model, tokenizer = model_from_args(args)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device).eval()
    prompt_ids = tokenizer(args.prompt, return_tensors="pt").input_ids
    if prompt_ids.shape[1] == 0:  # nothing to continue: start where a text would start
        prompt_ids = torch.tensor([[model.config.bos_token_id]])
    room = model.config.n_positions - prompt_ids.shape[1]
    if room < 1:
        fail(f"the prompt is {prompt_ids.shape[1]} tokens; this model reads at most {model.config.n_positions}")

    with torch.no_grad():
        sequences = model.generate(
            prompt_ids.to(device),
            attention_mask=torch.ones_like(prompt_ids).to(device),
            do_sample=True,
            max_new_tokens=min(args.length, room),
            temperature=args.temperature,
            top_k=args.top_k,
            top_p=args.top_p,
            num_return_sequences=args.num_return_sequences,
            pad_token_id=model.config.eos_token_id,
            # an --init small model has more embedding rows than its tokenizer has tokens
            suppress_tokens=list(range(len(tokenizer), model.config.vocab_size)) or None,
        )
    for number, sequence in enumerate(sequences, start=1):
        print(f"=== GENERATED SEQUENCE {number} ===")
        print(tokenizer.decode(sequence, skip_special_tokens=True, clean_up_tokenization_spaces=False))


if __name__ == "__main__":
    main()
