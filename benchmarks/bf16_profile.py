"""Where a SmolLM2 training forward and backward spends its time, in fp32 and under bf16 autocast:
the torch profiler's operators by self time, one pass each after a warm-up pass of both.

It explains the optimisation's speed-up from bf16 autocast: the matmuls get faster, while the
elementwise work (norms, rotary embeddings, activations, residual adds) does not, and autocast adds
dtype conversions (``aten::copy_``) of weights and activations around every matmul.
Run: ``python benchmarks/bf16_profile.py [--rows 4 --length 192]``.
"""

from __future__ import annotations

import time

import torch
import typer


def main(rows: int = typer.Option(4, help="Rows of the batch."),
         length: int = typer.Option(192, help="Tokens a row."),
         top: int = typer.Option(12, help="Operators shown.")):
    from torch.profiler import ProfilerActivity, profile
    from transformers import AutoModelForCausalLM

    from zerosearch.models import resolve_model
    from zerosearch.train.logps import plain_token_logps

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model("embedded:smollm2-135m-instruct"),
                                                 dtype=torch.float32)
    ids = torch.randint(10, 20000, (rows, length))
    attn = torch.ones_like(ids)

    def run(bf16: bool) -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            logps, _ = plain_token_logps(model, ids, attn, length * 3 // 4)
        logps.sum().backward()

    run(False)
    run(True)
    for bf16 in (False, True):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            started = time.perf_counter()
            run(bf16)
            seconds = time.perf_counter() - started
        print(f"{'bf16 autocast' if bf16 else 'fp32'}: {seconds:.2f} s on {torch.get_num_threads()} threads")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


if __name__ == "__main__":
    typer.run(main)
