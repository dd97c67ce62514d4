"""Benchmark: data preparation of IMDB (read, tokenize, vocabulary, numericalize), cold and warm.

    LSTMCLI_MIRROR=../shared/datasets python benchmarks/bench_encode.py [--data-dir DIR]

Cold = the token cache is empty (the archive is already fetched and extracted, which happens once);
warm = the cache holds the numericalized splits. Both are timed first, before the process has
allocated anything else (as in `lstmcli train`); on Linux with 2+ CPUs two processes tokenize
(lstmcli/data/encode.py). Then times the tokenizer alone, in this process, against the literal
twelve-regex torchtext implementation.
"""

import argparse
import shutil
import time
from pathlib import Path

from lstmcli.config import DataConfig
from lstmcli.data.encode import encode_dataset
from lstmcli.data.splits import load_splits
from lstmcli.data.text import basic_english, basic_english_regex


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default="data")
    args = parser.parse_args()
    cfg = DataConfig(dataset="imdb", data_dir=args.data_dir)
    load_splits(cfg)  # fetch + extract once, outside the timings
    # prepare first, in a process that has done nothing else yet, as `lstmcli train` would
    shutil.rmtree(Path(args.data_dir) / "cache", ignore_errors=True)
    _, t_cold = timed(lambda: encode_dataset(cfg))
    _, t_warm = timed(lambda: encode_dataset(cfg))
    (_, splits), t_read = timed(lambda: load_splits(cfg))
    texts = [t for s in splits.values() for t in s.texts]
    n_tok = sum(len(basic_english(t)) for t in texts)
    _, t_fast = timed(lambda: [basic_english(t) for t in texts])
    _, t_regex = timed(lambda: [basic_english_regex(t) for t in texts])
    print(f"IMDB: {len(texts)} reviews, {n_tok:,} tokens")
    print(f"read 50,000 files:            {t_read:6.2f} s")
    print(f"tokenize, basic_english:       {t_fast:6.2f} s  ({n_tok / t_fast / 1e6:.1f}M tokens/s)")
    print(f"tokenize, 12 regexes (ref.):   {t_regex:6.2f} s")
    print(f"prepare, cold cache:           {t_cold:6.2f} s  (read + tokenize + vocab + numericalize + save)")
    print(f"prepare, warm cache:           {t_warm:6.2f} s")


if __name__ == "__main__":
    main()
