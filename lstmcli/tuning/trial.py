"""One trial of a tune: its config (the base plus the sampled values), its training in its own run folder
with the test split left alone, each epoch's validation score reported to the pruner, and how it ended
recorded in the study (user attributes: config, run folder, epochs, seconds, why it was pruned or failed).

How a trial ends: COMPLETE with the best validation score of its epochs (the one its best/ holds);
PRUNED when the pruner stops it after an epoch, when the budget ends during it, or when its training
diverges (so that the sampler learns to avoid the region); FAIL with the message of any other error a
user can cause (an impossible combination, a model too big for memory), and the tune goes on.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

from lstmcli.config import to_dict
from lstmcli.errors import CheckFailed, Interrupted, LstmcliError
from lstmcli.tuning.space import trial_config

log = logging.getLogger(__name__)
FAILS_IN_A_ROW = 5  # a space whose every trial fails (a base config it cannot combine with) stops there


class TrialFailed(Exception):
    """A trial that failed for a reason a user can fix: Optuna records it as FAIL and the tune goes on."""


def run_folder(tune_dir: Path, number: int) -> Path:
    """TUNE_DIR/trials/NNNN: named by the trial number, which the study hands out once."""
    return tune_dir / "trials" / f"{number:04d}"


def epoch_reporter(trial, scores: dict[int, float], tick: Callable[[], None] = lambda: None):
    """The training hook `on_epoch(epoch, score)` of `trial`: reports the score to the study and raises
    optuna.TrialPruned when the pruner says the trial falls behind (its run folder stays resumable)."""
    import optuna

    def on_epoch(epoch: int, score: float) -> None:
        if epoch not in scores:  # (a resumed trial has reported the epochs before its stop already)
            trial.report(score, epoch)
        scores[epoch] = score
        tick()
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}: validation {score:.4f} is below the "
                                     f"median of earlier trials")
    return on_epoch


def _history_scores(run_dir: Path) -> dict[int, float]:
    """{epoch: selection score} of the epochs a run folder has finished (metrics.json's history)."""
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        multi = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["data"]["multi_label"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}
    key = "val_micro_f1" if multi else "val_accuracy"
    return {h["epoch"]: h[key] for h in metrics.get("history", []) if key in h}


def _resumable(run_dir: Path) -> bool:
    """Whether a run folder has a last/ to continue from (or one a cut save left as .last.old)."""
    return (run_dir / "metrics.json").is_file() and any(
        (run_dir / name).is_dir() for name in ("last", ".last.old"))


def _train(t, trial, cfg, run_dir: Path, scores: dict[int, float]) -> None:
    """Train the trial into `run_dir`: a trial that runs a stopped one again continues its run folder
    (fit.resume, exact), after reporting the epochs it had finished; any other starts afresh."""
    from lstmcli.training import fit
    from lstmcli.training.setup import Hooks

    hooks = Hooks(on_epoch=epoch_reporter(trial, scores, t.clock.save), deadline=t.deadline, test=False)
    rerun = trial.user_attrs.get("resumed_from") is not None
    if rerun and _resumable(run_dir):
        for epoch, score in sorted(_history_scores(run_dir).items()):
            trial.report(score, epoch)
            scores[epoch] = score
        fit.resume(run_dir, hooks)
    else:  # (a stopped trial with no last/ yet starts again in its folder)
        fit.run(cfg, force=rerun, hooks=hooks)


def objective(t, trial) -> float:
    """Optuna's objective: sample, train, return the best validation score (see the module's doc)."""
    import optuna

    params = {name: p.suggest(trial) for name, p in t.space.items()}
    resume_run = trial.user_attrs.get("resume_run")
    own = resume_run is not None and Path(resume_run).parent.parent == t.folder
    run_dir = Path(resume_run) if own else run_folder(t.folder, trial.number)
    trial.set_user_attr("tune_dir", str(t.folder))
    trial.set_user_attr("run_dir", str(run_dir))
    log.info(start_line(trial.number, params, trial.user_attrs.get("resumed_from")))
    scores: dict[int, float] = {}
    start = time.monotonic()
    try:
        cfg = trial_config(t.base, params, run_dir, f"trial {trial.number}")
        trial.set_user_attr("config", to_dict(cfg))
        trial.set_user_attr("metric", "micro_f1" if cfg.data.multi_label else "accuracy")
        _train(t, trial, cfg, run_dir, scores)
    except optuna.TrialPruned as exc:
        trial.set_user_attr("reason", str(exc))
        raise
    except Interrupted:
        if t.deadline is None or time.monotonic() < t.deadline:  # Ctrl-C or SIGTERM: the tune stops
            trial.set_user_attr("stopped", "interrupted")
            raise
        trial.set_user_attr("reason", "stopped by the budget")
        raise optuna.TrialPruned("stopped by the budget") from None
    except CheckFailed as exc:
        trial.set_user_attr("reason", f"diverged: {exc}")
        raise optuna.TrialPruned(f"diverged: {exc}") from None
    except LstmcliError as exc:
        trial.set_user_attr("error", str(exc))
        raise TrialFailed(str(exc)) from None
    except KeyboardInterrupt:
        trial.set_user_attr("stopped", "interrupted")
        raise
    finally:
        _record(trial, run_dir, scores, time.monotonic() - start)
    if not scores:
        raise TrialFailed("no epoch finished")
    return max(scores.values())


def _record(trial, run_dir: Path, scores: dict[int, float], seconds: float) -> None:
    """The trial's epochs, seconds and best score, whatever ended it."""
    epochs = len(_history_scores(run_dir)) if run_dir.is_dir() else 0
    trial.set_user_attr("epochs", epochs)
    trial.set_user_attr("seconds", round(seconds, 3))
    if scores:
        trial.set_user_attr("best_score", max(scores.values()))
    try:  # the data may have turned multi-label on by itself: the run's config.json says
        multi = json.loads((run_dir / "config.json").read_text(encoding="utf-8"))["data"]["multi_label"]
        trial.set_user_attr("metric", "micro_f1" if multi else "accuracy")
    except (OSError, ValueError, KeyError, TypeError):
        pass


def _value(value) -> str:
    """A sampled value as a trial's line shows it."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def start_line(number: int, params: dict, resumed_from: int | None) -> str:
    """The line a trial starts with: its number and parameters."""
    what = ", ".join(f"{k}={_value(v)}" for k, v in params.items())
    again = f" (trial {resumed_from} again, from where it stopped)" if resumed_from is not None else ""
    return f"trial {number}{again}: {what}"


def trial_done(t) -> Callable:
    """The study callback that logs the line a trial ends with and keeps tune.json's seconds current."""
    from optuna.trial import TrialState

    def done(study, frozen) -> None:
        t.clock.save()
        if frozen.user_attrs.get("tune_dir") != str(t.folder):
            return
        log.info(end_line(frozen, study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))))
        if frozen.state != TrialState.FAIL:
            t.failing.clear()
            return
        t.failing.append(f"trial {frozen.number}: {frozen.user_attrs.get('error', 'failed')}")
        if len(t.failing) >= FAILS_IN_A_ROW:
            study.stop()
    return done


def end_line(frozen, complete: list) -> str:
    """A trial's outcome: state, score, epochs, seconds, and the best complete trial so far."""
    a = frozen.user_attrs
    metric = a.get("metric", "accuracy").replace("_", "-")
    score = a.get("best_score")
    head = f"trial {frozen.number}: {frozen.state.name.lower()}"
    if score is not None and math.isfinite(score):
        head += f", validation {metric} {score:.4f}"
    epochs = a.get("epochs", 0)
    head += f" ({epochs} epoch{'' if epochs == 1 else 's'}, {a.get('seconds', 0):.0f} s)"
    why = a.get("reason") or a.get("error")
    if frozen.state.name != "COMPLETE" and why:
        head += f": {why}"
    ours = [c for c in complete if "config" in c.user_attrs]
    if ours:
        best = max(ours, key=lambda c: (c.value, -c.number))
        head += f"; best so far: trial {best.number}, {best.value:.4f}"
    return head
