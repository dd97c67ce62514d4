"""Nothing a user has is lost: export and train refuse to write over what exists, one run per folder,
`latest` only ever our own link, checkpoint swaps that survive a kill at any instant, resume refuses an
edited config, files honour the umask, and a full disk is one line with the old files intact."""

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lstmcli.checkpoint as ckpt
from lstmcli.config import resolve
from lstmcli.data.text import Vocab
from lstmcli.fsutil import old_dir
from lstmcli.runtime.plan import build_model, choose, model_spec

from .conftest import TINY, ok, run
from .conftest import one_line_error as one_line

pytestmark = pytest.mark.hostile
# a validation split of both labels, so that calibration runs (and writes) too
TRAIN = ("train", "--config", TINY, "--dataset", "imdb", "--val-fraction", "0.3", "--quiet")


def snapshot(folder: Path) -> dict:
    """Every file below `folder` (links as their targets' names), byte for byte."""
    out = {}
    for p in sorted(Path(folder).rglob("*")):
        if p.is_symlink():
            out[str(p.relative_to(folder))] = ("link", os.readlink(p))
        elif p.is_file():
            out[str(p.relative_to(folder))] = p.read_bytes()
    return out


@pytest.fixture
def trained(mirror, workdir):
    ok(run(*TRAIN, "--out", "runs/r"))
    return Path("runs/r")


# --- export ---------------------------------------------------------------------------------------

def test_export_refuses_what_exists_unless_forced(trained):
    Path("notes.json").write_text("my notes\n")
    before = snapshot(Path("."))
    one_line(run("export", "-c", trained / "best", "--out", "notes.txt"), 2, "notes.json exists", "--force")
    assert snapshot(Path(".")) == before
    ok(run("export", "-c", trained / "best", "--out", "m.onnx"))
    model = Path("m.onnx").read_bytes()
    Path("m.onnx").write_bytes(b"an older export")
    one_line(run("export", "-c", trained / "best", "--out", "m.onnx"), 2, "m.onnx exists")
    assert Path("m.onnx").read_bytes() == b"an older export"
    ok(run("export", "-c", trained / "best", "--out", "m.onnx", "--force"))
    assert Path("m.onnx").read_bytes() == model


def test_export_never_writes_into_its_checkpoint(trained):
    before = snapshot(trained)
    for flags in ([], ["--force"]):
        one_line(run("export", "-c", trained / "best", "--out", trained / "best" / "config.onnx", *flags), 2,
                 "is a file of the checkpoint")
    assert snapshot(trained) == before
    ok(run("predict", "--checkpoint", trained / "best", "a great film"))


@pytest.mark.parametrize("kind", ["fifo", "symlink", "folder", "device"])
def test_export_refuses_targets_that_are_not_regular_files(trained, kind):
    target = Path("target.onnx")
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "symlink":
        Path("real.onnx").write_bytes(b"keep me")
        target.symlink_to("real.onnx")
    elif kind == "folder":
        target.mkdir()
    else:
        target = Path(os.devnull)
    mode = os.lstat(target).st_mode
    for flags in ([], ["--force"]):
        one_line(run("export", "-c", trained / "best", "--out", target, *flags), 2,
                 "export writes regular files")
    assert os.lstat(target).st_mode == mode
    if kind == "symlink":
        assert Path("real.onnx").read_bytes() == b"keep me"


# --- train --out ----------------------------------------------------------------------------------

def test_train_refuses_a_finished_run_and_a_users_folder(trained):
    before = snapshot(trained)
    one_line(run(*TRAIN, "--out", trained), 2, "holds a finished run", "--force")
    assert snapshot(trained) == before
    Path("mine").mkdir()
    Path("mine/config.json").write_text('{"my": "own"}')
    one_line(run(*TRAIN, "--out", "mine"), 2, "is not empty", "'config.json'")
    assert Path("mine/config.json").read_text() == '{"my": "own"}'
    Path("afile").write_text("x")
    one_line(run(*TRAIN, "--out", "afile"), 2, "exists and is not a folder")
    assert not Path("runs/latest").exists() or os.readlink("runs/latest") == "r"


def test_train_points_an_unfinished_run_at_resume_and_force_starts_over(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    del metrics["test"]  # as if stopped between its last epoch and its test
    (trained / "metrics.json").write_text(json.dumps(metrics))
    before = snapshot(trained)
    one_line(run(*TRAIN, "--out", trained), 2, "holds an unfinished run", f"--resume {trained}")
    assert snapshot(trained) == before
    stale = trained / "last" / "stale.txt"
    stale.write_text("from the run before")
    ok(run(*TRAIN, "--out", trained, "--seed", "7", "--force"))
    assert not stale.exists()  # the earlier run's best/ and last/ went; nothing of it is mixed in
    assert json.loads((trained / "config.json").read_text())["train"]["seed"] == 7
    assert json.loads((trained / "best" / "config.json").read_text())["train"]["seed"] == 7


def test_a_folder_in_use_is_refused(mirror, workdir):
    Path("busy").mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from pathlib import Path;"
         " from lstmcli.training.rundir import RunLock;"
         " lock = RunLock(Path('busy')); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        one_line(run(*TRAIN, "--out", "busy"), 2, "in use by another lstmcli process", f"pid {holder.pid}")
        assert sorted(p.name for p in Path("busy").iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()
    ok(run(*TRAIN, "--out", "busy"))  # the holder died: its lock went with it


def test_two_trainings_into_one_folder_exactly_one_proceeds(mirror, workdir):
    ok(run(*TRAIN, "--out", "warm"))  # the data cached first: the race is for the run folder alone
    cmd = [sys.executable, "-m", "lstmcli", *map(str, TRAIN), "--out", "both"]
    procs = [subprocess.Popen([*cmd, "--seed", str(seed)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for seed in (1, 2)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, _, err in results if code == 2).strip().splitlines()
    assert len(loser) == 1 and ("in use by another lstmcli" in loser[0] or "not empty" in loser[0]), loser
    seed = json.loads(Path("both/config.json").read_text())["train"]["seed"]
    for sub in ("best", "last"):
        assert json.loads(Path(f"both/{sub}/config.json").read_text())["train"]["seed"] == seed


@pytest.mark.parametrize("kind", ["file", "folder", "foreign link"])
def test_latest_is_only_ever_our_own_link(mirror, workdir, kind):
    Path("runs").mkdir()
    latest = Path("runs/latest")
    if kind == "file":
        latest.write_text("my file")
    elif kind == "folder":
        latest.mkdir()
        (latest / "keep.txt").write_text("mine")
    else:
        latest.symlink_to(workdir)

    def state():
        if latest.is_symlink():
            return "link", os.readlink(latest)
        return ("folder", snapshot(latest)) if latest.is_dir() else ("file", latest.read_bytes())
    before = state()
    result = run("train", "--config", TINY, "--dataset", "imdb", "--epochs", "2", "--out", "runs/a")
    ok(result)
    assert result.stderr.count("lstmcli did not make: left as it is") == 1  # once, not every epoch
    ok(run(*TRAIN, "--out", "runs/b"))
    assert state() == before


def test_latest_follows_the_newest_run(mirror, workdir):
    ok(run(*TRAIN, "--out", "runs/a"))
    ok(run(*TRAIN, "--out", "runs/b"))
    assert os.readlink("runs/latest") == "b"
    assert not [p for p in Path("runs").iterdir() if p.name.startswith(".latest")]


# --- crash-safe swaps -----------------------------------------------------------------------------

def _checkpoint_parts():
    cfg = resolve(None, {"embedding_dim": 8, "hidden_size": 8, "max_length": 50})
    vocab = Vocab.build([["great", "awful", "film"]])
    return cfg, vocab


def _model(seed: int):
    cfg, vocab = _checkpoint_parts()
    torch.manual_seed(seed)
    return build_model(model_spec(cfg.model, len(vocab), 2, choose(cfg.model, torch.device("cpu"))))


def _weights(path: Path) -> torch.Tensor:
    return ckpt.load(path).model.embedding.weight.detach().clone()


def _faulted(action, fault_at: int, how: str) -> str:
    """Run `action` in a forked child whose `fault_at`-th rename is a kill -9 ('kill') or fails with EIO
    ('eio'); 'done' when the child got through without reaching it."""
    pid = os.fork()
    if pid == 0:  # the child: os.replace and os.rename count down to the fault
        calls = {"n": 0}
        real = {"replace": os.replace, "rename": os.rename}

        def faulty(name):
            def call(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] == fault_at:
                    if how == "kill":
                        os._exit(9)
                    raise OSError(errno.EIO, "Input/output error (injected)")
                return real[name](*args, **kwargs)
            return call
        os.replace, os.rename = faulty("replace"), faulty("rename")
        try:
            action()
        except Exception:
            os._exit(2)
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return {0: "done", 2: "failed", 9: "killed"}[code]


@pytest.mark.parametrize("how", ["kill", "eio"])
@pytest.mark.parametrize("operation", ["save", "update"])
def test_a_fault_at_any_rename_of_a_save_leaves_a_loadable_checkpoint(tmp_path, how, operation):
    cfg, vocab = _checkpoint_parts()
    path = tmp_path / "run" / "best"
    ckpt.save(path, cfg, vocab, ["neg", "pos"], _model(0), {"epoch": 1})
    old = _weights(path)
    new_model = _model(1)
    new = new_model.embedding.weight.detach().clone()
    if operation == "save":
        def action():
            ckpt.save(path, cfg, vocab, ["neg", "pos"], new_model, {"epoch": 2}, {"state": 1})
    else:
        def action():
            ckpt.update(path, new_model, {"epoch": 1, "calibration": {}})
    outcomes = []
    for fault_at in range(1, 20):
        outcome = _faulted(action, fault_at, how)
        outcomes.append(outcome)
        loaded = _weights(path)  # recovers a swap cut between its renames by itself
        assert torch.equal(loaded, old) or torch.equal(loaded, new), (fault_at, outcome)
        assert not old_dir(path).exists()
        if outcome == "done":
            assert torch.equal(loaded, new)
            break
        ckpt.save(path, cfg, vocab, ["neg", "pos"], _model(0), {"epoch": 1})  # back to the old one
    assert outcomes[-1] == "done" and len(outcomes) >= 3, outcomes  # every rename of the save was hit
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".part")]


def test_resume_and_eval_restore_a_swap_cut_between_its_renames(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    del metrics["test"]
    (trained / "metrics.json").write_text(json.dumps(metrics))
    for name in ("best", "last"):  # both killed after moving the old folder aside
        os.replace(trained / name, old_dir(trained / name))
    result = run("train", "--resume", trained)
    ok(result)
    assert "a save was cut short" in result.stderr
    os.replace(trained / "best", old_dir(trained / "best"))
    ok(run("eval", "--checkpoint", trained / "best", "--quiet"))
    assert (trained / "best").is_dir() and not old_dir(trained / "best").exists()


# --- resume and calibration -------------------------------------------------------------------------

def test_resume_refuses_a_config_edited_since_last(trained):
    metrics = json.loads((trained / "metrics.json").read_text())
    del metrics["test"]
    (trained / "metrics.json").write_text(json.dumps(metrics))
    config = json.loads((trained / "config.json").read_text())
    config["model"]["hidden_size"] = 64
    (trained / "config.json").write_text(json.dumps(config))
    before = snapshot(trained)
    one_line(run("train", "--resume", trained), 2, "model.hidden_size = 64", "last/config.json says 32")
    assert snapshot(trained) == before
    config["model"]["hidden_size"] = 32
    config["train"]["log_every"] = 5  # how verbosely it runs may change
    (trained / "config.json").write_text(json.dumps(config))
    ok(run("train", "--resume", trained))


def test_a_resumed_calibration_reports_the_same_before(trained):
    first = json.loads((trained / "metrics.json").read_text())["calibration"]
    metrics = json.loads((trained / "metrics.json").read_text())
    del metrics["test"]  # stopped after calibration rewrote best/, before the test
    (trained / "metrics.json").write_text(json.dumps(metrics))
    ok(run("train", "--resume", trained))
    again = json.loads((trained / "metrics.json").read_text())["calibration"]
    assert again["weights_before"] == [1.0] and again["before"] == first["before"]
    assert again["weights"] == pytest.approx(first["weights"], rel=1e-9)


# --- permissions and full disks ---------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_every_output_honours_the_umask(mirror, workdir, umask):
    previous = os.umask(umask)
    try:
        ok(run(*TRAIN, "--out", "r", "--tensorboard"))
        ok(run("export", "-c", "r/best", "--out", "m.onnx"))
        ok(run("eval", "-c", "r", "-q"))
        ok(run("predict", "-c", "r", "--output", "p.tsv", "a text"))
    finally:
        os.umask(previous)
    made = [*Path("r").rglob("*"), *Path("data").rglob("*"), *map(Path, ("m.onnx", "m.json", "p.tsv"))]
    files = [p for p in made if p.is_file() and not p.is_symlink()]
    assert {"model.safetensors", "eval-test.json", "p.tsv"} <= {p.name for p in files}
    assert any(p.name.startswith("events.out.tfevents") for p in files)
    wrong = {str(p): oct(p.stat().st_mode & 0o777) for p in files
             if p.stat().st_mode & 0o777 != 0o666 & ~umask}
    wrong |= {str(p): oct(p.stat().st_mode & 0o777) for p in [Path("r"), *made]
              if p.is_dir() and not p.is_symlink() and p.stat().st_mode & 0o777 != 0o777 & ~umask}
    assert not wrong


def test_a_replaced_file_keeps_its_permissions(trained):
    Path("private.tsv").write_text("old\n")
    os.chmod("private.tsv", 0o600)
    ok(run("predict", "-c", trained / "best", "--output", "private.tsv", "--force", "a text"))
    assert Path("private.tsv").read_text() != "old\n"
    assert os.stat("private.tsv").st_mode & 0o777 == 0o600


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MB tmpfs mounted for the test (root only; skipped where mounting is not allowed)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path, leave: int = 0) -> Path:
    """Fill `disk` until `leave` bytes are free."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler = disk / "filler"
    with filler.open("wb") as fh:
        fh.truncate(0)
        fh.write(b"\0" * max(0, free - leave))
    return filler


def test_a_full_disk_is_one_line_and_keeps_what_was_there(mirror, workdir, small_disk):
    ok(run(*TRAIN, "--out", small_disk / "r"))
    before = snapshot(small_disk / "r")
    fill(small_disk)
    one_line(run("calibrate", "--checkpoint", small_disk / "r" / "best"), 2,
             f"cannot write {small_disk / 'r' / 'best'}", "No space left on device")
    one_line(run("export", "-c", small_disk / "r" / "best", "--out", small_disk / "m.onnx"), 2,
             "No space left on device")
    one_line(run(*TRAIN, "--out", small_disk / "new"), 2, "No space left on device")
    assert snapshot(small_disk / "r") == before
    assert not [p for p in small_disk.rglob("*") if p.name.endswith(".part")]
    ok(run("predict", "--checkpoint", small_disk / "r" / "best", "a great film"))


def test_a_full_disk_while_saving_the_trainer_state(mirror, workdir, small_disk):
    ok(run(*TRAIN, "--out", "probe"))  # how much a run writes before its trainer state (in 4 KB pages)
    state = Path("probe/last/trainer_state.pt").stat().st_size
    pages = [-(-p.stat().st_size // 4096) * 4096 for p in Path("probe").rglob("*")
             if p.is_file() and p.suffix != ".png"]
    fill(small_disk, leave=sum(pages) - state // 2)
    result = run(*TRAIN, "--out", small_disk / "r")
    one_line(result, 2, "cannot write", "No space left on device")
    assert not [p for p in small_disk.rglob("*") if p.name.endswith(".part")]


def test_a_full_token_cache_is_a_warning_and_the_run_goes_on(mirror, workdir, small_disk):
    data = small_disk / "data"
    ok(run("train", "--config", TINY, "--dataset", "ag_news", "--data-dir", data, "--out", "warm", "--quiet"))
    for entry in (data / "cache").iterdir():
        subprocess.run(["rm", "-rf", str(entry)], check=True)
    fill(small_disk)
    result = run("train", "--config", TINY, "--dataset", "ag_news", "--data-dir", data, "--out", "r")
    ok(result)
    assert "token cache not saved" in result.stderr and "No space left on device" in result.stderr
    assert json.loads(Path("r/metrics.json").read_text())["test"]["n"] > 0


def test_stale_temporary_folders_of_a_killed_save_are_cleared(trained):
    stale = trained / ".last.abc123.part"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"half")
    ok(run(*TRAIN, "--out", trained, "--force"))
    assert not stale.exists()
    assert stat.S_ISDIR(os.lstat(trained / "last").st_mode)


def test_bench_writes_its_report_to_regular_files_only(workdir):
    os.mkfifo("bench.json")
    one_line(run("bench", "--cell", "rnn", "--impl", "builtin", "--batches", "1", "--repeats", "1"), 2,
             "bench.json is a FIFO")
    assert stat.S_ISFIFO(os.lstat("bench.json").st_mode)


# --- found by a hostile tester --------------------------------------------------------------------

def test_a_run_inside_a_checkpoint_is_refused_and_swaps_keep_what_they_did_not_write(trained):
    one_line(run(*TRAIN, "--out", trained / "best" / "sub"), 2, "is inside the checkpoint")
    notes = trained / "best" / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("keep me")
    (trained / "best" / "link").symlink_to("notes")
    ok(run("calibrate", "--checkpoint", trained / "best"))
    assert (notes / "mine.txt").read_text() == "keep me" and os.readlink(trained / "best" / "link") == "notes"


def test_export_protects_a_checkpoint_whose_swap_was_cut(trained):
    os.replace(trained / "best", old_dir(trained / "best"))
    one_line(run("export", "-c", trained / "best", "--out", trained / "best" / "labels.onnx"), 2,
             "is a file of the checkpoint")
    ok(run("predict", "--checkpoint", trained / "best", "a film"))


@pytest.mark.parametrize("edit,fragment", [
    (lambda c: c["model"].update(hidden_size=200_000), "describes a model of"),
    (lambda c: c["model"].update(num_layers=10**9), "'model.num_layers' must be >= 1 and <= 1024"),
    (lambda c: c["model"].update(ngram_buckets=2**40), "describes a model of"),
])
def test_a_checkpoint_whose_config_was_edited_is_refused_before_it_is_built(trained, edit, fragment):
    config = json.loads((trained / "best" / "config.json").read_text())
    edit(config)
    (trained / "best" / "config.json").write_text(json.dumps(config))
    one_line(run("predict", "--checkpoint", trained / "best", "a film"), 2, fragment)


def test_a_deeply_nested_config_is_one_line(trained):
    (trained / "best" / "config.json").write_text("[" * 100_000)
    one_line(run("predict", "--checkpoint", trained / "best", "a film"), 2, "broken checkpoint")
    (trained / "metrics.json").write_text("[" * 100_000)
    one_line(run("train", "--resume", trained), 2, "cannot resume")


@pytest.mark.parametrize("labels", [["a", "a"], [1, 2], [None, {}], ["a\tb", "c"]])
def test_predict_refuses_a_checkpoint_with_bad_labels(trained, labels):
    (trained / "best" / "labels.json").write_text(json.dumps(labels))
    one_line(run("predict", "--checkpoint", trained / "best", "a film"), 2, "labels.json")


def test_out_dot_and_a_users_relative_latest_link(mirror, workdir):
    Path("here").mkdir()
    os.chdir("here")
    ok(run(*TRAIN, "--out", ".", "--data-dir", workdir / "data"))
    assert json.loads(Path("metrics.json").read_text())["test"]["n"] > 0
    os.chdir(workdir)
    Path("L").mkdir()
    Path("L/notes.txt").write_text("mine")
    Path("L/latest").symlink_to("notes.txt")
    result = run("train", "--config", TINY, "--dataset", "imdb", "--val-fraction", "0.3", "--out", "L/run")
    ok(result)
    assert os.readlink("L/latest") == "notes.txt" and "lstmcli did not make" in result.stderr


def test_a_run_killed_before_its_first_checkpoint_starts_again_with_force(trained):
    for name in ("best", "last"):
        subprocess.run(["rm", "-rf", str(trained / name)], check=True)
    metrics = json.loads((trained / "metrics.json").read_text())
    (trained / "metrics.json").write_text(json.dumps({**{k: v for k, v in metrics.items() if k != "test"},
                                                      "history": []}))
    one_line(run(*TRAIN, "--out", trained), 2, "stopped before its first checkpoint", "--force")
    one_line(run("train", "--resume", trained), 2, "stopped before its first checkpoint")
    ok(run(*TRAIN, "--out", trained, "--force"))


@pytest.mark.parametrize("metrics", ["[]", "null", '{"history": {}}', '{"history": [1]}'])
def test_resume_refuses_a_hostile_metrics_json(trained, metrics):
    (trained / "metrics.json").write_text(metrics)
    one_line(run("train", "--resume", trained), 2, "metrics.json is not a run's record")


def test_the_largest_seed_trains(mirror, workdir):
    ok(run(*TRAIN, "--seed", str(2**63 - 1), "--out", "r"))


def test_a_full_disk_names_the_json_it_could_not_write(trained, small_disk):
    fill(small_disk)
    one_line(run("bench", "--cell", "rnn", "--impl", "builtin", "--batches", "1", "--repeats", "1",
                 "--out", small_disk / "b.json"), 2, f"cannot write {small_disk / 'b.json'}: No space left")
    one_line(run("eval", "--checkpoint", trained / "best", "--batch-size", "0"), 2,
             "Invalid value for '--batch-size'")
