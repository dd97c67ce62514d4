"""The Python API, which the command line itself calls: train, resume, pretrain, evaluate, calibrate,
load, export, and tune_process.

    import lstmcli
    run_dir = lstmcli.train("imdb_small", epochs=1)   # a config file, dict or Config
    report = lstmcli.evaluate(run_dir / "best", split="test")      # the dict `lstmcli eval --json` prints
    clf = lstmcli.load(run_dir / "best")                           # safetensors + JSON, never a pickle
    clf.predict(["What a wonderful film", "Utterly boring"], top_k=2)
    clf.encode("What a wonderful film")                            # the ids an exported model takes

Errors a caller can cause raise lstmcli.errors.LstmcliError (its subclasses say which kind); the CLI
turns them into one line and an exit code.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lstmcli import __version__
from lstmcli.config import Config, apply, apply_flags, resolve
from lstmcli.errors import LstmcliError

if TYPE_CHECKING:  # imported where it is used: the onnx backend's `predict` never loads torch
    from lstmcli.inference.predict import Classifier


def _config(config: Config | Mapping[str, Any] | str | Path | None, overrides: dict[str, Any]) -> Config:
    """Defaults, $LSTMCLI_DATA_DIR, then `config` (a TOML file, a nested dict as in TOML, or a Config),
    then `overrides` by field name (what flags are to the CLI)."""
    if config is None or isinstance(config, (str, Path)):
        return resolve(config, overrides)
    if isinstance(config, Mapping):
        return apply_flags(apply(resolve(), dict(config), "config"), overrides)
    if isinstance(config, Config):
        return apply_flags(config, overrides)
    raise TypeError(f"config must be a path, a dict or a Config, not {type(config).__name__}")


def train(config: Config | Mapping[str, Any] | str | Path | None = None, *, force: bool = False,
          skip_memory_check: bool = False, **overrides: Any) -> Path:
    """Train as `config` and `overrides` say (e.g. `train("tiny", epochs=2, seed=1)`);
    returns the run folder: config.json, metrics.json (history, test), best/, last/ and the pictures.

    The run folder (`out`) must be new or empty unless `force`; a run estimated to need more memory
    than is available is refused before its model is built unless `skip_memory_check`."""
    from lstmcli.training import fit
    return fit.run(_config(config, overrides), force, not skip_memory_check)


def pretrain(config: Config | Mapping[str, Any] | str | Path | None = None, *, force: bool = False,
             **overrides: Any) -> Path:
    """Pretrain the embedding and recurrent encoder as language models on unlabelled text (the config's
    `unlabelled`, else its dataset's training split); returns the run folder, whose best/ a later
    `train(..., init_from=run_dir / "best")` starts from."""
    from lstmcli.training import pretrain as lm
    return lm.fit(lm.start(_config(config, overrides), force))


def resume_pretraining(run_dir: str | Path) -> Path:
    """Continue a stopped `pretrain` run folder where it stopped; returns it."""
    from lstmcli.training import pretrain as lm
    return lm.fit(lm.reopen(Path(run_dir)))


def resume(run_dir: str | Path) -> Path:
    """Continue a stopped run folder exactly where it stopped; returns it."""
    from lstmcli.training import fit
    return fit.resume(Path(run_dir))


def evaluate(checkpoint: str | Path, split: str = "test", dataset: str | None = None,
             data_dir: str | None = None, batch_size: int | None = None, device: str = "auto",
             impl: str | None = None, precision: str | None = None,
             threshold: float | None = None, text_column: str | None = None,
             label_column: str | None = None, backend: str = "torch") -> dict[str, Any]:
    """Metrics of a checkpoint on a split of its dataset (or on every row of the file `dataset`):
    accuracy, loss, macro-F1, per-class P/R/F1, the confusion matrix, and for two labels ROC-AUC and the
    F1-best threshold; `threshold` decides two labels by probability. `text_column` and `label_column`
    name a user file's columns where they differ from the training data's. `backend` onnx (or auto)
    evaluates the folder's export instead of its weights in PyTorch. Also written beside the checkpoint
    as eval-SPLIT.json (an export's: eval-SPLIT.int8.json / .onnx.json) and confusion-SPLIT.png (their
    paths under the report's "files")."""
    from lstmcli.evaluation.evaluate import evaluate_checkpoint
    from lstmcli.inference.backends import choose_backend, device_for
    from lstmcli.reports import write_eval_files
    from lstmcli.runtime.device import resolve_device
    columns = {k: v for k, v in (("text_column", text_column), ("label_column", label_column)) if v}
    device = device_for(backend, device)
    chosen = choose_backend(Path(checkpoint), backend, resolve_device(device).type, impl, precision)
    if chosen.path.suffix.lower() == ".onnx":
        raise LstmcliError(f"eval reads its data settings from the checkpoint: give its folder (-c FOLDER "
                           f"--backend onnx), not {chosen.path}")
    return write_eval_files(evaluate_checkpoint(chosen.path, split, dataset, data_dir, batch_size, device,
                                                impl, precision, threshold, columns, chosen.export))


def calibrate(checkpoint: str | Path, data_dir: str | None = None, batch_size: int | None = None,
              device: str = "auto") -> dict[str, Any]:
    """Fit the checkpoint's branch weights on its run's validation split and write them into it (train
    does this itself unless `calibrate = false`); returns the weights and the split's log-loss and
    accuracy before and after (a multi-label model's thresholds are fitted again after them)."""
    from lstmcli import checkpoint as checkpoints
    from lstmcli.runtime.device import resolve_device
    from lstmcli.training.calibration import calibrate_checkpoint
    dev = resolve_device(device)
    ck = checkpoints.load(Path(checkpoint), str(dev))
    report = calibrate_checkpoint(ck, dev, data_dir, batch_size)
    metrics = {**ck.metrics, "calibration": report}
    if "label_thresholds" in report:  # a multi-label model's thresholds follow its new probabilities
        fitted = report["label_thresholds"]
        metrics |= {"thresholds": fitted["thresholds"],
                    "thresholds_fitted": {k: v for k, v in fitted.items() if k != "thresholds"}}
    checkpoints.update(ck.path, ck.model, metrics)
    return {"checkpoint": str(ck.path), "dataset": ck.config.data.dataset, **report, "lstmcli": __version__}


def load(checkpoint: str | Path, device: str = "cpu", impl: str | None = None,
         precision: str | None = None, max_length: int | None = None, backend: str = "auto",
         threads: int | None = None) -> Classifier:
    """A Classifier for a checkpoint (or run) folder or an exported .onnx file: `.predict(texts, top_k=None,
    threshold=None)` (a multi-label model: every label over its threshold), `.probabilities(texts)`,
    `.encode(text)`, `.labels`, `.multi_label`, `.backend`. `backend`: torch,
    onnx or auto (inference/backends.py: onnx when the folder holds a current export and onnxruntime is
    installed); `threads`: onnxruntime's (torch's stay torch.set_num_threads'). `.scores(texts)` gives
    the probabilities as numpy, `.probabilities(texts)` as torch.
    Changes no process-wide setting (see tune_process)."""
    from lstmcli.inference.predict import Classifier
    return Classifier(Path(checkpoint), device, impl, max_length, precision, backend, threads)


def log_to_stderr(quiet: bool = False, debug: bool = False) -> None:
    """Show lstmcli's progress and log lines on stderr as the command line does (a bar where stderr is
    a terminal); `quiet`: warnings only. Without this call lstmcli logs through `logging` only, silent
    until the program configures it."""
    from lstmcli.exits import setup_logging
    setup_logging(quiet, debug)


def tune_process() -> dict[str, bool]:
    """Turn on the process-wide CPU settings the command line uses, for faster CPU runs in this process:
    denormal floats flushed to zero, freed tensor memory kept for reuse (runtime/process.py). lstmcli
    never changes them by itself; returns which took."""
    from lstmcli.runtime.process import tune_process as tune
    return tune()


def export(checkpoint: str | Path, out: str | Path | None = None, format: str = "onnx",
           force: bool = False, quantize: str | None = None) -> tuple[Path, Path]:
    """Write the checkpoint as a model that runs without lstmcli (`format`: a key of
    lstmcli.exporters.FORMATS; onnx: (ids, lengths) -> logits) and beside it a JSON of its labels,
    vocabulary, tokenizer rules and cut; returns both paths. `out` None: model.onnx (model.int8.onnx
    with quantize="int8") in the checkpoint folder, where `load` and `lstmcli predict` find it. Existing
    files are replaced only with `force`, and never anything but a regular file outside the checkpoint."""
    from lstmcli.exporters import export as export_as
    return export_as(Path(checkpoint), None if out is None else Path(out), format, force, quantize)
