"""The training LM head alone: ours (`training.supervised_head`, chunked cross-entropy over the supervised rows through
the `lm_head` module) vs the head it replaced (TRL 1.16's private `ChunkedLogProbFunction` kernel on the same rows).

    python -m benchmarks.supervised_head            # 2 rounds of 9 interleaved forward+backward passes per case

The 70M config's head (hidden 512 -> vocab 32000, fp32, 2 threads), batch 4 x 310 positions, with the supervised
rows of a short answer (10 tokens per sample, as in `benchmarks.training`) and of a long one (100 per sample). Each
repetition times both heads back to back in a rotating order; the ratio is the median of the per-repetition ratios,
so drifts in machine speed cancel. The backward includes the gradients of the hidden states and of the weight.
"""

import argparse
import statistics
import time

import torch

from tinyllava_hf.training.supervised_head import IGNORE_INDEX, supervised_log_probs

from .measure import NUM_THREADS, format_table, set_threads, write_results

HIDDEN, VOCAB, BATCH, SEQ_LEN = 512, 32000, 4, 310
CASES = {"short answers": 10, "long answers": 100}  # supervised tokens per sample


def trl_head(hidden_states, labels, lm_head):
    """The previous head: TRL's kernel on the supervised rows (positional arguments of TRL 1.16)."""
    from trl.kernels import ChunkedLogProbFunction

    labels = labels[:, 1:]
    mask = labels != IGNORE_INDEX
    outputs = ("log_probs", "entropy", "is_top1")
    per_token = ChunkedLogProbFunction.apply(
        hidden_states[:, :-1][mask], lm_head.weight, lm_head.bias, labels[mask], 1.0, 32768, None, 1.0, outputs
    )
    return -per_token[0].sum() / mask.sum()


def our_head(hidden_states, labels, lm_head):
    return supervised_log_probs(hidden_states, labels, lm_head).loss


def inputs(supervised_per_sample: int):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(BATCH, SEQ_LEN, HIDDEN, generator=generator, requires_grad=True)
    labels = torch.full((BATCH, SEQ_LEN), IGNORE_INDEX)
    labels[:, -supervised_per_sample:] = torch.randint(0, VOCAB, (BATCH, supervised_per_sample), generator=generator)
    return hidden, labels


def step_seconds(head, hidden, labels, lm_head) -> float:
    hidden.grad = lm_head.weight.grad = None
    start = time.perf_counter()
    head(hidden, labels, lm_head).backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=NUM_THREADS)
    args = parser.parse_args()
    set_threads(args.threads)
    torch.manual_seed(0)
    lm_head = torch.nn.Linear(HIDDEN, VOCAB, bias=False)
    heads = {"ours": our_head, "trl kernel": trl_head}
    rows = []
    for round_index in range(args.rounds):
        for case, supervised in CASES.items():
            hidden, labels = inputs(supervised)
            losses = {name: head(hidden, labels, lm_head).item() for name, head in heads.items()}  # also warms up
            times = {name: [] for name in heads}
            for repeat in range(args.repeats):
                order = list(heads)[repeat % 2 :] + list(heads)[: repeat % 2]
                for name in order:
                    times[name].append(step_seconds(heads[name], hidden, labels, lm_head))
            ratios = [ours / trl for ours, trl in zip(times["ours"], times["trl kernel"])]
            rows.append({
                "round": round_index + 1, "case": case, "supervised rows": BATCH * supervised,
                "ours ms": 1000 * statistics.median(times["ours"]),
                "trl kernel ms": 1000 * statistics.median(times["trl kernel"]),
                "ours / trl": statistics.median(ratios),
                "loss difference": abs(losses["ours"] - losses["trl kernel"]),
            })  # fmt: skip
    columns = ["round", "case", "supervised rows", "ours ms", "trl kernel ms", "ours / trl", "loss difference"]
    print(format_table(rows, columns))
    write_results("supervised_head", {"hidden": HIDDEN, "vocab": VOCAB, "batch": BATCH, "seq_len": SEQ_LEN,
                                      "rows": rows})  # fmt: skip


if __name__ == "__main__":
    main()
