"""What a tune writes from its study: the trials table (CSV and JSON), best.toml, and two pictures
(the optimisation history; the parameters' importances).

Everything is drawn from the study's trials alone (their user attributes hold what lstmcli recorded:
the trial's config, run folder, epochs, seconds, why it was pruned or failed), so any process of a
shared study writes the same tables. Files are written whole or not at all (fsutil). matplotlib is
imported inside the functions that draw, and only its object-oriented API is used, as in
lstmcli/evaluation/plots.py.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from lstmcli.config import SECTIONS
from lstmcli.evaluation.plots import new_figure, save_figure
from lstmcli.fsutil import atomic_text, write_json

TRIALS_CSV, TRIALS_JSON, BEST_TOML = "trials.csv", "trials.json", "best.toml"
HISTORY, IMPORTANCES = "history.png", "importances.png"
# (epochs_trained: a searched field may be called epochs, and the CSV has a column per field)
COLUMNS = ("number", "state", "val_score", "metric", "epochs_trained", "seconds", "pruned", "reason")
TAIL = ("resumed_from", "run_dir", "tune_dir", "started")


def _reason(trial, reruns: dict[int, int]) -> str:
    """Why a trial ended as it did, in words ('' for a complete one)."""
    attrs, state = trial.user_attrs, trial.state.name
    if state == "PRUNED":
        return attrs.get("reason", "pruned")
    if state == "FAIL":
        why = attrs.get("error") or {"interrupted": "interrupted"}.get(attrs.get("stopped"), "")
        if trial.number in reruns:
            why = (why or "its tune process ended during it") + f"; re-run as trial {reruns[trial.number]}"
        return why or "failed"
    return "" if state == "COMPLETE" else state.lower()


def trial_rows(trials: list) -> list[dict[str, Any]]:
    """One plain row per Optuna trial, in trial order: the JSON table's rows."""
    reruns = {t.user_attrs["resumed_from"]: t.number for t in trials if "resumed_from" in t.user_attrs}
    rows = []
    for t in sorted(trials, key=lambda t: t.number):
        attrs = t.user_attrs
        rows.append({
            "number": t.number, "state": t.state.name,
            "val_score": attrs.get("best_score", t.value), "metric": attrs.get("metric"),
            "epochs_trained": attrs.get("epochs"), "seconds": attrs.get("seconds"),
            "pruned": t.state.name == "PRUNED", "reason": _reason(t, reruns), "params": dict(t.params),
            "intermediate": {str(k): v for k, v in sorted(t.intermediate_values.items())},
            "resumed_from": attrs.get("resumed_from"), "run_dir": attrs.get("run_dir"),
            "tune_dir": attrs.get("tune_dir"),
            "started": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None})
    return rows


def write_trials(rows: list[dict], folder: Path) -> list[Path]:
    """trials.json (the rows) and trials.csv (one column per parameter, empty where a trial has none)."""
    write_json(folder / TRIALS_JSON, rows)
    params = sorted({name for row in rows for name in row["params"]})
    with atomic_text(folder / TRIALS_CSV) as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([*COLUMNS, *params, *TAIL])
        for row in rows:
            cells = [row[c] for c in COLUMNS] + [row["params"].get(p) for p in params]
            writer.writerow(["" if v is None else v for v in cells + [row[c] for c in TAIL]])
    return [folder / TRIALS_CSV, folder / TRIALS_JSON]


def best_trial(trials: list):
    """The complete trial with the highest validation score among those lstmcli ran (they carry their
    config); the earliest on a tie; None when there is none."""
    done = [t for t in trials if t.state.name == "COMPLETE" and "config" in t.user_attrs]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def toml_value(value: Any) -> str:
    """A flat config value (bool, int, float, str) as TOML; floats by repr, which reads back equal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # JSON's escapes are TOML's (\" \\ \n \t \uXXXX ...); TOML also wants DEL escaped
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    raise TypeError(f"a config value is a bool, number or string, not {type(value).__name__}")


def best_toml(config: dict, header: list[str]) -> str:
    """A config (config.to_dict's sections) as a TOML file that `lstmcli train --config` reads back to
    the same config; `out` is left out (a new run makes its own folder)."""
    lines = [f"# {line}" for line in header]
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        lines += [f"{key} = {toml_value(value)}" for key, value in config[section].items() if key != "out"]
    return "\n".join(lines) + "\n"


def history_picture(rows: list[dict], path: Path, title: str) -> Path:
    """Each trial's validation score by trial number (complete: dots; pruned: crosses, at the best
    score it reached), and the best complete score so far as a step line."""
    from matplotlib.ticker import MaxNLocator

    fig = new_figure(8, 4.5)
    ax = fig.subplots()
    for state, style, label in (("COMPLETE", "o", "complete"), ("PRUNED", "x", "pruned")):
        shown = [r for r in rows if r["state"] == state and r["val_score"] is not None]
        if shown:
            ax.plot([r["number"] for r in shown], [r["val_score"] for r in shown], style, label=label,
                    color="tab:blue" if state == "COMPLETE" else "tab:gray", zorder=3)
    best, xs, ys = None, [], []
    for r in rows:
        if r["state"] == "COMPLETE" and r["val_score"] is not None:
            best = r["val_score"] if best is None else max(best, r["val_score"])
        if best is not None:
            xs.append(r["number"])
            ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:red", label="best so far")
    metric = next((r["metric"] for r in rows if r["metric"]), "accuracy")
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {metric.replace('_', '-')}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not rows or not any(r["val_score"] is not None for r in rows):
        ax.text(0.5, 0.5, "no trial has a validation score yet", ha="center", transform=ax.transAxes)
    else:
        ax.legend(loc="best")
    ax.set_title(title)
    return save_figure(fig, path)


def importance_picture(importances: dict[str, float] | None, note: str, path: Path, title: str) -> Path:
    """The parameters' importances as horizontal bars, the most important on top; `note` in their place
    when there are none to draw."""
    fig = new_figure(7, 1.2 + 0.45 * max(len(importances or {}), 2))
    ax = fig.subplots()
    if importances:
        names = list(importances)[::-1]
        ax.barh(names, [importances[n] for n in names], color="tab:blue")
        ax.set_xlabel("importance (PED-ANOVA, share of the total)")
        ax.set_xlim(0, max(1.0, max(importances.values())))
    else:
        ax.text(0.5, 0.5, note, ha="center", va="center", transform=ax.transAxes, wrap=True)
        ax.set_axis_off()
    ax.set_title(title)
    return save_figure(fig, path)
