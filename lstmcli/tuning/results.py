"""The end of a tune: the trials table, best.toml and the pictures from the whole study, the best trial
tested once on the test split (the only time a tune looks at it), and summary.json.

Model selection uses validation scores only: the best trial is the complete one with the highest, and
its test figures are reported, never compared.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections import Counter
from pathlib import Path

from lstmcli import __version__
from lstmcli.config import from_dict, to_dict
from lstmcli.errors import LstmcliError
from lstmcli.evaluation.metrics import selection_score
from lstmcli.fsutil import write_bytes, write_json
from lstmcli.tuning import outputs
from lstmcli.tuning.settings import mask_url

log = logging.getLogger(__name__)
SUMMARY = "summary.json"
STATES = ("COMPLETE", "PRUNED", "FAIL", "RUNNING", "WAITING")


def importances(study) -> tuple[dict[str, float] | None, str]:
    """(the parameters' importances over the complete trials, PED-ANOVA (no extra package); or None and
    why there are none)."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return None, f"importances need at least 2 complete trials; the study has {len(complete)}"
    try:
        with warnings.catch_warnings():  # (experimental in Optuna 4; its notes on few trials go nowhere)
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    except (RuntimeError, ValueError) as exc:
        return None, f"no importances: {exc}"
    return ({name: float(v) for name, v in found.items()}, "") if found else (None, "no parameter varies")


def _write_best_toml(t, best) -> Path:
    """best.toml: the best trial's config, headed by the study, the trial and its score."""
    value = f"{best.value:.4f}"
    metric = best.user_attrs.get("metric", "accuracy").replace("_", "-")
    header = [f"best.toml: trial {best.number} of the lstmcli tune study '{t.settings.study}', "
              f"validation {metric} {value}",
              "train it again with: lstmcli train --config best.toml"]
    config = from_dict(best.user_attrs["config"], f"trial {best.number}")  # checked as a file would be
    path = t.folder / outputs.BEST_TOML
    write_bytes(path, outputs.best_toml(to_dict(config), header).encode("utf-8"))
    return path


def test_best(t, best) -> tuple[dict | None, str]:
    """(best/'s report on the test split, or None and why not). Tested once: a report its run folder
    holds already is read back; a trial of this folder records it in its metrics.json, as `train` does."""
    run_dir = Path(best.user_attrs.get("run_dir", ""))
    metrics_file = run_dir / "metrics.json"
    if not (run_dir / "best").is_dir():
        return None, f"best/ of trial {best.number} is not here ({run_dir}): test it where it ran"
    try:
        metrics = json.loads(metrics_file.read_text(encoding="utf-8"))
        if isinstance(metrics.get("test"), dict):
            return metrics["test"], ""
        from lstmcli.evaluation import plots
        from lstmcli.evaluation.evaluate import evaluate_checkpoint

        device = best.user_attrs["config"]["train"]["device"]
        report = evaluate_checkpoint(run_dir / "best", "test", device=device)
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return None, f"trial {best.number}'s run folder {run_dir} cannot be read ({exc})"
    except LstmcliError as exc:
        return None, f"not tested: {exc}"
    if best.user_attrs.get("tune_dir") == str(t.folder):
        write_json(metrics_file, {**metrics, "test": report})
        plots.report_picture(report, run_dir, f"trial {best.number}: test split, best/")
    return report, ""


def _best_entry(best) -> dict | None:
    """The summary's entry for the best trial (None: no trial completed)."""
    if best is None:
        return None
    a = best.user_attrs
    return {"trial": best.number, "val_score": best.value, "metric": a.get("metric"),
            "params": dict(best.params), "epochs_trained": a.get("epochs"), "run_dir": a.get("run_dir")}


def finish(t) -> dict:
    """Write the tune folder's tables, best.toml, pictures and summary.json; returns the summary."""
    trials = t.study.get_trials(deepcopy=False)
    rows = outputs.trial_rows(trials)
    files = outputs.write_trials(rows, t.folder)
    best = outputs.best_trial(trials)
    report, note = (None, "no trial completed") if best is None else test_best(t, best)
    if best is not None:
        files.append(_write_best_toml(t, best))
    found, why = importances(t.study)
    title = f"study {t.settings.study}"
    files.append(outputs.history_picture(rows, t.folder / outputs.HISTORY, f"{title}: optimisation history"))
    files.append(outputs.importance_picture(found, why, t.folder / outputs.IMPORTANCES,
                                            f"{title}: parameter importances"))
    counts = Counter(t.state.name for t in trials)
    summary = {"tune_dir": str(t.folder), "study": t.settings.study, "storage": mask_url(t.settings.storage),
               "best": _best_entry(best), "test": report,
               "trials": {"total": len(trials), **{s.lower(): counts.get(s, 0) for s in STATES}},
               "seconds": round(t.clock.spent(), 1), "importances": found,
               "files": [str(p) for p in files + [t.folder / SUMMARY]], "lstmcli": __version__}
    if note:
        summary["test_note"] = note
    write_json(t.folder / SUMMARY, summary)
    (log.info if best is not None else log.warning)(outcome_line(summary))
    return summary


def outcome_line(summary: dict) -> str:
    """The line a tune ends with: its trials, its best, and the best's test figure."""
    n = summary["trials"]
    line = (f"{n['total']} trials: {n['complete']} complete, {n['pruned']} pruned, {n['fail']} failed; ")
    best = summary["best"]
    if best is None:
        return line + "no trial completed, so no best.toml"
    metric = (best["metric"] or "accuracy").replace("_", "-")
    line += f"best: trial {best['trial']}, validation {metric} {best['val_score']:.4f}"
    test = summary["test"]
    if test is None:
        return f"{line} ({summary.get('test_note', 'not tested')})"
    return f"{line}; test {metric} {selection_score(test):.4f} (n={test.get('n')})"
