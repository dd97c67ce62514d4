"""Where a pretraining step goes: the whole step (forward, backward, Adam) of `lstmcli pretrain`'s
language model against its adaptive softmax alone (forward and backward over the same hidden states),
on real batches of a dataset's training split.

    python benchmarks/bench_pretrain.py --dataset imdb --data-dir DIR [--cutoffs 500,4000,20000] ...

Prints one JSON line: tokens/s of the step, and the softmax's share of it (medians over --steps steps,
after --warmup)."""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from lstmcli.config import resolve
from lstmcli.data.batches import Truncation, bucket_batches, collate, truncated_lengths
from lstmcli.data.unlabelled import load_corpus
from lstmcli.runtime.plan import plan_run
from lstmcli.training.pretrain import build_language_model, lm_spec
from lstmcli.training.schedule import make_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="imdb")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--cutoffs", default="500,4000,20000")
    ap.add_argument("--div-value", type=float, default=4.0)
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--embedding-dim", type=int, default=128)
    ap.add_argument("--vocab-max-size", type=int, default=50000)
    ap.add_argument("--max-length", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    a = ap.parse_args()
    cfg = resolve(None, {"dataset": a.dataset, "data_dir": a.data_dir, "lm_cutoffs": a.cutoffs,
                         "lm_div_value": a.div_value, "hidden_size": a.hidden_size,
                         "embedding_dim": a.embedding_dim, "vocab_max_size": a.vocab_max_size,
                         "max_length": a.max_length, "batch_size": a.batch_size, "bidirectional": True,
                         "threads": a.threads, "max_train_examples": 2000})
    plan = plan_run(cfg)
    corpus = load_corpus(cfg)
    torch.manual_seed(0)
    model = build_language_model(lm_spec(cfg, len(corpus.vocab), plan), cfg)
    opt = make_optimizer(model, cfg)
    cut = Truncation.of(cfg.data)
    lengths = truncated_lengths(corpus.documents, cut.length)[corpus.train]
    batches = [corpus.train[b] for b in bucket_batches(lengths, a.batch_size, 0, 1)]
    step_s, soft_s, tokens = [], [], []
    for i, rows in enumerate(batches[:a.warmup + a.steps]):
        batch = collate(corpus.documents, rows, cut)
        t0 = time.perf_counter()
        loss = model(batch.ids, batch.lengths).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        t1 = time.perf_counter()
        with torch.no_grad():
            states, targets = model.hidden_states(batch.ids, batch.lengths)
        states.requires_grad_(True)
        t2 = time.perf_counter()
        model.softmax(states, targets).loss.backward()
        t3 = time.perf_counter()
        if i >= a.warmup:
            step_s.append(t1 - t0)
            soft_s.append(t3 - t2)
            tokens.append(batch.num_tokens)
    step, soft = statistics.median(step_s), statistics.median(soft_s)
    print(json.dumps({"cutoffs": a.cutoffs, "div_value": a.div_value, "hidden": a.hidden_size,
                      "vocab": len(corpus.vocab), "tokens_per_s": round(sum(tokens) / sum(step_s)),
                      "step_s": round(step, 4), "softmax_s": round(soft, 4),
                      "softmax_share": round(soft / step, 3), "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
