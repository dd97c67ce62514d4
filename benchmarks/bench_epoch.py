"""Benchmark: IMDB training tokens/s of one BiLSTM fed three ways.

    LSTMCLI_MIRROR=../shared/datasets python benchmarks/bench_epoch.py [--config imdb_best]
        [--examples 2000] [--threads 2] [--seed 0] [--precision fp32|bf16]

  lstmcli         train_one_epoch as `lstmcli train` runs it: length-bucketed batches of the config's
                  batch size, exact variable lengths on padded tensors (the built-in kernels per layer)
  notebook padded random (unbucketed) batches of 16 padded to their longest text, nn.LSTM over the
                  padding, the final state read at the last padded position - what the original
                  notebooks did, and wrong for every text shorter than its batch's longest
  notebook packed random batches of 16 through pack_padded_sequence (exact)

All three train the same model (the config's, impl builtin) from the same weights on the same examples
(a seeded sample of the training split, cut as the config says) for one pass, forward + backward + Adam
step. Tokens/s counts real tokens only, never padding. With --precision bf16 all three run under the
same bfloat16 autocast.
"""

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from lstmcli.config import resolve
from lstmcli.data.batches import Truncation, bucket_batches, collate, padding_share, truncated_lengths
from lstmcli.data.encode import encode_dataset
from lstmcli.runtime.plan import build_model, choose, model_spec
from lstmcli.runtime.process import tune_process
from lstmcli.training.fit import train_one_epoch
from lstmcli.training.schedule import make_optimizer, make_scheduler
from lstmcli.training.state import EpochProgress


class NotebookBiLSTM(nn.Module):
    """The notebooks' model: embedding -> nn.LSTM -> final states of both directions -> linear."""

    def __init__(self, reference: nn.Module, packed: bool):
        super().__init__()
        self.embedding, self.head, self.packed = reference.embedding, reference.head, packed
        self.lstm = reference.encoder.rnn  # the same nn.LSTM (and weights) lstmcli trains
        self.dropout = reference.dropout
        self.bf16 = reference.spec.precision == "bf16"

    def forward(self, ids, lengths):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self._logits(ids, lengths).float()

    def _logits(self, ids, lengths):
        x = self.embedding(ids)
        if self.packed:
            x = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(x)  # padded: h_n was read after the padding, not at each text's end
        return self.head(self.dropout(torch.cat([h_n[-2], h_n[-1]], dim=-1)))


def notebook_epoch(model, split, indices, cut, batch_size, seed):
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    batches = indices[torch.randperm(len(indices), generator=g)].split(batch_size)
    model.train()
    tokens = 0
    start = time.perf_counter()
    for idx in batches:
        b = collate(split, idx, cut)
        loss = F.cross_entropy(model(b.ids, b.lengths), b.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        tokens += b.num_tokens
    seconds = time.perf_counter() - start
    return tokens, seconds, padding_share(batches, truncated_lengths(split, cut.length))


def lstmcli_epoch(model, cfg, split, indices, cut, seed):
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, math.ceil(len(indices) / cfg.train.batch_size))
    lengths = truncated_lengths(split, cut.length)
    batches = [indices[b] for b in bucket_batches(lengths[indices], cfg.train.batch_size, seed, 1)]
    progress = EpochProgress()
    train_one_epoch(model, split, batches, optimizer, scheduler, torch.device("cpu"), cut,
                    cfg.train.grad_clip, progress, should_stop=lambda: False)
    return progress.tokens, progress.seconds, padding_share(batches, lengths)


def main() -> None:
    tune_process()  # the process settings the CLI uses (denormal flush, heap reuse)
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="imdb_best")
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    cfg = resolve(args.config, {"impl": "builtin", "precision": args.precision})
    data = encode_dataset(cfg.data)
    split, cut = data.splits["train"], Truncation.of(cfg.data)
    indices = torch.randperm(len(split), generator=torch.Generator().manual_seed(args.seed))[: args.examples]
    print(f"{len(indices)} IMDB training reviews, cut {cut.keep.value} {cut.length}; model of {args.config} "
          f"(impl builtin, {args.precision}); {torch.get_num_threads()} threads, torch {torch.__version__}")
    results = {}
    for name in ("lstmcli", "notebook padded", "notebook packed"):
        torch.manual_seed(args.seed)
        choice = choose(cfg.model, torch.device("cpu"))
        model = build_model(model_spec(cfg.model, len(data.vocab), len(data.label_names), choice))
        if name == "lstmcli":
            tokens, seconds, pad = lstmcli_epoch(model, cfg, split, indices, cut, args.seed)
        else:
            notebook = NotebookBiLSTM(model, packed=name.endswith("packed"))
            tokens, seconds, pad = notebook_epoch(notebook, split, indices, cut, 16, args.seed)
        results[name] = tokens / seconds
        print(f"{name:<16} {tokens:>10,} tokens {seconds:8.1f} s {tokens / seconds:>10,.0f} tok/s  "
              f"padding {pad:.1%}  x{results['lstmcli'] / results[name]:.2f} slower than lstmcli", flush=True)


if __name__ == "__main__":
    main()
