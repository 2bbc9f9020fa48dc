"""Fine-tune GPT-2 as a causal language model on a text file (one joke per
line, say) and save the model and tokenizer so generate.py can load them.

The text is tokenized as one stream and cut into blocks of `--block_size`
tokens, so the model also learns the line breaks between jokes. Training is a
plain AdamW loop with a linearly decaying learning rate, on the GPU when there
is one. Progress goes to stdout as JSON lines: one per step
(`{"step", "epoch", "loss"}`), one per epoch (`{"epoch", "mean_loss"}`), and a
last one with the training time (`{"train_seconds"}`). Inside a cast run the
loss, learning rate and each epoch's mean loss are also reported as metrics,
one JSON line each to the file $CAST_METRICS names (`cast metrics N`).

    python finetune.py --init tiny --train_data_file=data.txt --output_dir=output
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from pathlib import Path

import torch
from transformers import set_seed

from gpt2_models import INIT_SHAPES, fail, model_from_args


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_name_or_path", help="a model hub name (gpt2) or a local folder")
    source.add_argument("--init", choices=sorted(INIT_SHAPES),
                        help="start from a randomly initialised GPT-2 of this size (offline); "
                             "its tokenizer is trained on --train_data_file")
    parser.add_argument("--train_data_file", required=True, help="a UTF-8 text file")
    parser.add_argument("--output_dir", required=True, help="where the model and tokenizer are saved")
    parser.add_argument("--num_train_epochs", type=int, default=1)
    parser.add_argument("--max_steps", type=int, default=0,
                        help="stop after this many optimizer steps in all (0: run every epoch)")
    parser.add_argument("--per_device_train_batch_size", type=int, default=2)
    parser.add_argument("--block_size", type=int, default=0,
                        help="tokens per training example (default: the longest the model reads)")
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--bf16", action="store_true", help="compute in bfloat16 autocast (weights stay fp32)")
    parser.add_argument("--logging_steps", type=int, default=1, help="log the loss every this many steps")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    for name in ("num_train_epochs", "per_device_train_batch_size", "logging_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.max_steps < 0 or args.block_size < 0 or args.learning_rate <= 0:
        parser.error("--max_steps and --block_size cannot be negative, --learning_rate must be positive")
    return args


def log(**fields) -> None:
    print(json.dumps(fields), flush=True)


def metric(name: str, value: float, step: int) -> None:
    """One point for `cast metrics` (docs/metrics.md): a JSON line appended to the
    file $CAST_METRICS names inside a cast run; nothing elsewhere."""
    path = os.environ.get("CAST_METRICS")
    if path:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps({"name": name, "value": value, "step": step}) + "\n")


def token_blocks(tokenizer, text: str, block_size: int) -> torch.Tensor:
    """The text as one token stream cut into full blocks (the tail is dropped)."""
    ids = tokenizer(text, verbose=False).input_ids
    count = len(ids) // block_size
    if count == 0:
        fail(f"the training text is {len(ids)} tokens, shorter than one block of {block_size}")
    return torch.tensor(ids[: count * block_size]).view(count, block_size)


def main() -> None:
    args = parse_args()
    set_seed(args.seed)
    try:
        text = Path(args.train_data_file).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        fail(f"cannot read {args.train_data_file}: {error}")
    model, tokenizer = model_from_args(args)

    max_positions = model.config.n_positions
    block_size = args.block_size or max_positions
    if block_size > max_positions:
        fail(f"--block_size {block_size} is longer than this model reads ({max_positions} tokens)")
    blocks = token_blocks(tokenizer, text, block_size)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.loss_type = "ForCausalLM"  # GPT-2 configs name none; naming it spares a warning per run
    model.to(device).train()
    batch_size = args.per_device_train_batch_size
    steps_per_epoch = -(-len(blocks) // batch_size)
    total_steps = steps_per_epoch * args.num_train_epochs
    if args.max_steps:
        total_steps = min(total_steps, args.max_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.learning_rate)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / total_steps)
    precision = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    shuffler = torch.Generator().manual_seed(args.seed)
    log(device=device.type, parameters=model.num_parameters(), train_tokens=blocks.numel(),
        blocks=len(blocks), block_size=block_size, steps_per_epoch=steps_per_epoch, total_steps=total_steps)

    started = time.perf_counter()
    step = 0
    for epoch in range(args.num_train_epochs):
        epoch_loss = torch.zeros((), device=device)
        epoch_steps = 0
        for batch_indices in torch.randperm(len(blocks), generator=shuffler).split(batch_size):
            batch = blocks[batch_indices].to(device, non_blocking=True)
            with precision:
                loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            epoch_steps += 1
            epoch_loss += loss.detach()
            if step % args.logging_steps == 0 or step == total_steps:
                log(step=step, epoch=epoch, loss=round(loss.item(), 4))
                metric("loss", loss.item(), step)
                metric("learning_rate", schedule.get_last_lr()[0], step)
            if step == total_steps:
                break
        log(epoch=epoch, mean_loss=round(epoch_loss.item() / epoch_steps, 4), steps=epoch_steps)
        metric("mean_loss", epoch_loss.item() / epoch_steps, step)
        if step == total_steps:
            break
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_seconds = time.perf_counter() - started

    model.save_pretrained(args.output_dir)
    tokenizer.save_pretrained(args.output_dir)
    log(train_seconds=round(train_seconds, 2), steps=step, output_dir=args.output_dir)


if __name__ == "__main__":
    main()
