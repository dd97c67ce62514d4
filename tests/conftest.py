"""Fixtures: tiny corpora written in both real formats (AG_NEWS CSV, the aclImdb tarball), served
from a local mirror folder with its own SHA256SUMS, and an isolated working folder per test; float32
comparisons against float64 references; what the CPU does with bfloat16."""

from __future__ import annotations

import csv
import hashlib
import io
import os
import random
import tarfile
from pathlib import Path

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from typer.testing import CliRunner

from lstmcli.cli import app
from lstmcli.runtime import precision

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
TINY = Path(__file__).resolve().parents[1] / "lstmcli" / "configs" / "tiny.toml"  # the seconds-long config
F32_EPS = torch.finfo(torch.float32).eps  # 2^-23

# Tests that run bf16 where the device runs it natively, and are skipped elsewhere (AVX2-only CPUs, and
# the suite's AVX2 emulation, fail with oneDNN's "could not create a primitive descriptor").
_BF16 = precision.bf16_support("cpu")
needs_native_bf16 = pytest.mark.skipif(_BF16.level != precision.NATIVE,
                                       reason=f"needs native bfloat16; this is a {_BF16.why}")


def run(*args, input=None):
    """The real CLI in this process (CliRunner), stdout and stderr kept apart."""
    return CliRunner().invoke(app, [str(a) for a in args], input=input)


def ok(result):
    assert result.exit_code == 0, result.output + str(result.exception or "")
    return result


def is_warning(line: str) -> bool:
    return line.startswith("lstmcli: ") and not line.startswith("lstmcli: error: ")


def warnings_dropped(stderr: str) -> str:
    """stderr without its warning lines (a tiny corpus's validation split is always under 100 rows)."""
    return "".join(line for line in stderr.splitlines(keepends=True) if not is_warning(line))


def one_line_error(result, code, *fragments):
    """The command failed with `code` and one error line on stderr, holding every fragment; warning lines
    (`lstmcli: ...`, e.g. a run's sanity warnings said before it failed) may come before it, nothing else."""
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = [line for line in result.stderr.strip().splitlines() if not is_warning(line)]
    assert len(lines) == 1 and lines[0].startswith("lstmcli: error: "), result.stderr
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def pytest_report_header(config):
    flags = " ".join(f"{k}={os.environ[k]}" for k in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA",
                                                       "MKL_ENABLE_INSTRUCTIONS") if k in os.environ)
    return (f"lstmcli: torch {torch.__version__}, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
            f"bfloat16 {_BF16.level} ({_BF16.why}){'; emulating: ' + flags if flags else ''}")


def assert_float32_close(ours: torch.Tensor, theirs: torch.Tensor, exact: torch.Tensor,
                         msg: str = "") -> None:
    """`ours` and `theirs` are float32 computations of what `exact` holds (the same computation in
    float64): ours must err by at most 4x what PyTorch's own float32 result errs by, on this CPU, and
    is never asked to be closer than 32 float32 ulps of the largest magnitude.

    A float32 sum of n terms errs by about eps * sqrt(n) times its magnitude, and which terms a CPU's
    kernels add first (vector width, MKL's blocking, oneDNN's path) decides the last digits; a fixed
    tolerance therefore passes on one CPU and fails on another, while this bound moves with the CPU."""
    exact = exact.detach().double()
    scale = exact.abs().max().item() if exact.numel() else 0.0
    err_ours = (ours.detach().double() - exact).abs().max().item() if exact.numel() else 0.0
    err_theirs = (theirs.detach().double() - exact).abs().max().item() if exact.numel() else 0.0
    bound = max(4 * err_theirs, 32 * F32_EPS * scale)
    assert err_ours <= bound, (f"{msg}: error {err_ours:.3g} against float64, above {bound:.3g} "
                               f"(PyTorch's float32 errs by {err_theirs:.3g}; largest magnitude {scale:.3g})")


def float32_tolerance(terms: int, scale: float = 1.0, dtype: torch.dtype = torch.float32) -> float:
    """A bound on the error of a quantity of magnitude `scale` built from `terms` products and sums
    rounded to `dtype` (eps * sqrt(terms) is the typical size; 8x that leaves room for bad luck)."""
    return 8 * torch.finfo(dtype).eps * terms ** 0.5 * scale


def reference(rnn, x, lengths):
    """nn.LSTM/GRU/RNN on a PackedSequence: the exact variable-length semantics we must equal."""
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    out, state = rnn(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.size(1))
    h_n, c_n = state if isinstance(state, tuple) else (state, None)
    return out, h_n, c_n


@pytest.fixture
def bf16_level(monkeypatch):
    """Make lstmcli see this CPU's bfloat16 support as the level the test passes in, e.g.
    `bf16_level(precision.UNAVAILABLE)` for an AVX2-only CPU (the suite's AVX2 emulation, where
    oneDNN is capped at AVX2, shows that the real detection says the same)."""
    def set_level(level: str) -> None:
        why = {precision.NATIVE: "CPU with AMX",
               precision.UNAVAILABLE: "CPU (AVX2) without bfloat16 support in oneDNN",
               precision.NOT_NATIVE: "CPU (AVX512) without AVX-512-BF16 or AMX"}[level]
        monkeypatch.setattr(precision, "_cpu_support", lambda: precision.Bf16Support(level, why))
        precision.bf16_support.cache_clear()

    yield set_level
    precision.bf16_support.cache_clear()

POS_WORDS = ["great", "wonderful", "superb", "moving", "brilliant", "loved"]
NEG_WORDS = ["awful", "boring", "terrible", "dull", "waste", "hated"]
FILLER = ["the", "film", "movie", "plot", "actor", "scene", "story", "it", "was", "and", "a", "of"]
AG_TOPICS = {
    1: ["minister", "election", "war", "embassy", "treaty"],
    2: ["match", "goal", "coach", "season", "cup"],
    3: ["shares", "profit", "market", "bank", "stocks"],
    4: ["software", "internet", "space", "chip", "science"],
}


def sentence(rng: random.Random, keywords: list[str], n: int = 12) -> str:
    words = [rng.choice(FILLER) for _ in range(n)] + rng.sample(keywords, 3)
    rng.shuffle(words)
    return " ".join(words)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_sums(mirror: Path, names: list[str]) -> None:
    lines = [f"{sha256(mirror / n)}  {n}\n" for n in names]
    (mirror / "SHA256SUMS").write_text("".join(lines))


def write_ag_csv(path: Path, rows_per_class: int, seed: int) -> None:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, quoting=csv.QUOTE_ALL, lineterminator="\n")
        for i in range(rows_per_class * 4):
            label = i % 4 + 1
            title = sentence(rng, AG_TOPICS[label], 4).title()
            writer.writerow([str(label), title, sentence(rng, AG_TOPICS[label]) + ' \\ "quoted"'])


def write_imdb_tar(path: Path, per_class: int, seed: int) -> None:
    rng = random.Random(seed)
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            for label, words in (("pos", POS_WORDS), ("neg", NEG_WORDS)):
                for i in range(per_class):
                    text = sentence(rng, words, 20) + "<br /><br />" + sentence(rng, words, 10)
                    data = text.encode("utf-8")
                    info = tarfile.TarInfo(f"aclImdb/{split}/{label}/{i}_{8 if label == 'pos' else 2}.txt")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
            unsup = tarfile.TarInfo("aclImdb/train/unsup/0_0.txt")
            unsup.size = 5
            tar.addfile(unsup, io.BytesIO(b"skip!"))


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh working folder as cwd, with no mirror or data dir inherited from the caller."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.delenv("LSTMCLI_MIRROR", raising=False)
    monkeypatch.delenv("LSTMCLI_DATA_DIR", raising=False)
    return work


@pytest.fixture
def mirror(tmp_path, workdir, monkeypatch):
    """A local mirror holding tiny AG_NEWS and IMDB files under the upstream names, with SHA256SUMS."""
    root = tmp_path / "mirror"
    write_ag_csv(root / "ag_news_csv" / "train.csv", 30, seed=1)
    write_ag_csv(root / "ag_news_csv" / "test.csv", 10, seed=2)
    write_imdb_tar(root / "aclImdb_v1.tar.gz", 40, seed=3)
    write_sums(root, ["ag_news_csv/train.csv", "ag_news_csv/test.csv", "aclImdb_v1.tar.gz"])
    monkeypatch.setenv("LSTMCLI_MIRROR", str(root))
    return root


@pytest.fixture
def trained(mirror, workdir):
    """A run folder `r` of the tiny config, trained through the CLI on the mirror's IMDB."""
    assert run("train", "--config", TINY, "--dataset", "imdb", "--quiet", "--out", "r").exit_code == 0
    return Path("r")
