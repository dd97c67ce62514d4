"""Pictures of a run: learning curves and confusion matrices (a multi-label report's per-label F1:
label_plot.py) as PNG files, drawn from metrics JSON alone.

matplotlib is imported inside the functions that draw, and only its object-oriented API is used
(Figure + the Agg canvas): no pyplot state, no display, and nothing paid by commands that never draw
(`predict`'s cold start). Files are written whole or not at all (rendered in memory, then renamed).

A confusion picture reads either form of a report's confusion (metrics.py: the dense "confusion", or
"confusion_sparse" beyond 50 labels) and draws at most SHOWN_LABELS labels, so that its size and drawing
time do not grow with the labels. `lstmcli plot` checks metrics.json before drawing anything: a file
that is not what lstmcli writes ends in one LstmcliError naming it.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from lstmcli.errors import LstmcliError
from lstmcli.fsutil import write_bytes

LEARNING_CURVES = "learning_curves.png"
CONFUSION = "confusion_matrix.png"
MAX_LABEL_CHARS = 18
# The most labels a confusion picture draws: beyond, the cells would be too small to read and the
# canvas (and its drawing time) would grow with the labels squared.
SHOWN_LABELS = 50
ZEROS_UP_TO = 10  # labels up to which a confusion picture writes "0" into its empty cells
CURVES = ("train_loss", "val_loss", "train_accuracy", "val_accuracy", "lr")  # what learning_curves reads


def new_figure(width: float, height: float):
    """A Figure on the Agg canvas (no pyplot), constrained layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path) -> Path:
    """Render `fig` as PNG in memory, then write it whole to `path`."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_bytes(path, buffer.getvalue())
    return path


def _short(name: str) -> str:
    """A label name cut to MAX_LABEL_CHARS for the axes."""
    return name if len(name) <= MAX_LABEL_CHARS else name[: MAX_LABEL_CHARS - 1] + "…"


def learning_curves(metrics: dict, path: Path, title: str = "") -> Path:
    """Train/val loss, train/val accuracy and the learning rate per epoch, the best epoch marked."""
    from matplotlib.ticker import MaxNLocator

    history = metrics.get("history") or []
    if not history:
        raise LstmcliError("no finished epoch to plot yet (metrics.json has an empty history)")
    epochs = [h["epoch"] for h in history]
    best = metrics.get("best_epoch")
    fig = new_figure(13, 3.8)
    axes = fig.subplots(1, 3)
    # a language model (lstmcli pretrain) has perplexity where a classifier has accuracy
    second = "perplexity" if "val_perplexity" in history[0] else "accuracy"
    panels = [("loss", "loss"), (second, second)]
    for ax, (key, name) in zip(axes, panels, strict=False):
        for prefix, style in (("train", "o-"), ("val", "s-")):
            values = [h.get(f"{prefix}_{key}") for h in history]
            if all(v is not None for v in values):
                ax.plot(epochs, values, style, label=f"{prefix} {name}", markersize=4)
        ax.set_title(name)
    lrs = [h.get("lr") for h in history]
    if all(v is not None for v in lrs):
        axes[2].plot(epochs, lrs, "o-", color="tab:green", markersize=4)
        axes[2].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if max(lrs) == min(lrs):  # a constant rate: show it against 0, not magnified around itself
            axes[2].set_ylim(0, 1.5 * lrs[0] or 1.0)
    else:
        axes[2].text(0.5, 0.5, "not recorded by this run", ha="center", va="center",
                     transform=axes[2].transAxes)
    axes[2].set_title("learning rate (at the end of each epoch)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if len(epochs) == 1:
            ax.set_xlim(epochs[0] - 1, epochs[0] + 1)
        if best is not None:
            ax.axvline(best, color="grey", linestyle="--", linewidth=1, zorder=0,
                       label=f"best epoch ({best})")
    for ax in axes[:2]:
        ax.legend(fontsize=8)
    if best is not None:
        best_val = next((h.get("val_accuracy") for h in history if h["epoch"] == best), None)
        if best_val is not None:
            axes[1].plot([best], [best_val], "*", color="tab:red", markersize=14)
    fig.suptitle(title or "learning curves", parse_math=False)  # a folder name is text, not TeX
    return save_figure(fig, path)


def confusion_matrix(report: dict, path: Path, title: str = "") -> Path:
    """Counts and shares of each true label (rows: true labels, columns: predicted), label names on both
    axes, from a report's dense "confusion" or its "confusion_sparse" (metrics.py). Beyond SHOWN_LABELS
    labels only the SHOWN_LABELS with the most true examples are drawn, as the title says; their shares
    are of all of a label's examples, also those predicted as a label not drawn."""
    import numpy as np

    k = len(report["labels"])
    true, pred, count = _cells(report)
    support = np.zeros(k, dtype=np.int64)  # each label's true examples, drawn or not
    np.add.at(support, true, count)
    shown = most_supported(support)
    at = np.full(k, -1, dtype=np.int64)  # each label's row (and column) in the picture, -1 when not drawn
    at[shown] = np.arange(len(shown))
    keep = (at[true] >= 0) & (at[pred] >= 0)
    counts = np.zeros((len(shown), len(shown)), dtype=np.int64)
    np.add.at(counts, (at[true[keep]], at[pred[keep]]), count[keep])
    shares = counts / np.maximum(support[shown], 1)[:, None]
    names = [_short(str(report["labels"][i])) for i in shown]
    accuracy = report.get("accuracy")
    n = report.get("n", int(count.sum()))
    parts = [f"accuracy {accuracy:.2%}, n={n:,}" if accuracy is not None else "",
             f"{len(shown)} most frequent of {k:,} labels" if len(shown) < k else ""]
    subtitle = "; ".join(p for p in parts if p)
    fig = _confusion_figure(counts, shares, names)
    fig.suptitle(f"{title}  ({subtitle})" if title and subtitle else title or subtitle, parse_math=False)
    return save_figure(fig, path)


def report_picture(report: dict, folder: Path, title: str = "", split: str = "") -> Path:
    """Draw a report's picture into `folder`: its confusion matrix, or a multi-label report's per-label
    F1 (label_plot.py); `split` names the file of an eval (confusion-test.png) instead of a run's."""
    from lstmcli.evaluation.label_plot import LABEL_F1, label_f1
    if report.get("multi_label"):
        return label_f1(report, folder / (f"label-f1-{split}.png" if split else LABEL_F1), title)
    return confusion_matrix(report, folder / (f"confusion-{split}.png" if split else CONFUSION), title)


def most_supported(support) -> list[int]:
    """The indices of the labels a confusion picture draws, in label order: all of them up to
    SHOWN_LABELS, else the SHOWN_LABELS with the most true examples (on ties, the earlier label)."""
    import numpy as np

    if len(support) <= SHOWN_LABELS:
        return list(range(len(support)))
    top = np.argsort(-np.asarray(support, dtype=np.int64), kind="stable")[:SHOWN_LABELS]
    return sorted(top.tolist())


def _cells(report: dict):
    """(true, predicted, count) int64 arrays of the non-zero cells of a report's confusion, either form."""
    import numpy as np

    if report.get("confusion") is not None:
        dense = np.asarray(report["confusion"], dtype=np.int64).reshape(len(report["labels"]), -1)
        true, pred = np.nonzero(dense)
        return true.astype(np.int64), pred.astype(np.int64), dense[true, pred]
    cells = np.asarray(report["confusion_sparse"], dtype=np.int64).reshape(-1, 3)
    return cells[:, 0], cells[:, 1], cells[:, 2]


def _confusion_figure(counts, shares, names: list[str]):
    """The two panels, counts and shares, with a number in every cell (but empty ones beyond ZEROS_UP_TO
    labels); cells grow with the labels."""
    k = len(names)
    side = max(4.0, 0.5 * k + 2.2)
    fig = new_figure(2 * side + 1.0, side + 0.6)
    font = max(6.0, min(10.0, 110.0 / k))
    for ax, values, fmt, name in zip(fig.subplots(1, 2), (counts, shares), ("{:d}", "{:.0%}"),
                                     ("counts", "share of each true label"), strict=True):
        top = 1 if values is shares else max(int(values.max()), 1)
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=top)
        fig.colorbar(image, ax=ax, shrink=0.8)
        for i in range(k):
            for j in range(k):
                v = values[i, j]
                if v == 0 and k > ZEROS_UP_TO:  # a blank cell reads as 0; thousands of "0" cost seconds
                    continue
                dark = v / top > 0.55  # white text on the darker half of the colour map
                ax.text(j, i, fmt.format(int(v) if values is counts else float(v)), ha="center",
                        va="center", fontsize=font, color="white" if dark else "black")
        # parse_math off: a label such as "$\foo$" is a name to show, not TeX that fails to parse
        ax.set_xticks(range(k), names, rotation=45 if k > 2 else 0, ha="right" if k > 2 else "center",
                      fontsize=font + 1, parse_math=False)
        ax.set_yticks(range(k), names, fontsize=font + 1, parse_math=False)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
    return fig


def plot_run(run_dir: Path) -> list[Path]:
    """Draw a run folder's pictures from its metrics.json: learning curves, and the confusion matrix of
    the test split (of best/'s validation when the run has not reached its test yet). A file that is not
    what lstmcli writes ends in one LstmcliError naming it, before anything is drawn."""
    run_dir = Path(run_dir)
    if (run_dir / "model.safetensors").is_file() and (run_dir.parent / "metrics.json").is_file():
        run_dir = run_dir.parent  # a run's best/ or last/: its run, whose history the pictures draw
    where = run_dir / "metrics.json"
    try:
        metrics = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LstmcliError(f"cannot plot {run_dir}: no readable metrics.json ({exc})") from None
    check_metrics(metrics, where)
    name = run_dir.resolve().name
    if metrics.get("kind") == "language_model":  # lstmcli pretrain's: perplexity curves, no report
        title = f"{name}: language model learning curves"
        return [learning_curves(metrics, run_dir / LEARNING_CURVES, title)]
    report, split = metrics.get("test"), "test"
    if report is None:
        report, split = _best_val(run_dir / "best" / "metrics.json"), "val"
    written = [learning_curves(metrics, run_dir / LEARNING_CURVES, f"{name}: learning curves")]
    if report:
        written.append(report_picture(report, run_dir, f"{name}: {split} split, best/"))
    return written


def _best_val(where: Path) -> dict | None:
    """best/'s validation report (checked), or None where best/ has none yet."""
    try:
        best = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(best, dict):
        raise _bad(where, "is not a JSON object")
    if best.get("val") is not None:
        check_report(best["val"], where, "val")
    return best.get("val")


def _bad(where: Path, what: str) -> LstmcliError:
    """The one-line error for a file plot cannot draw."""
    return LstmcliError(f"cannot plot {where}: {what}")


def _number(value) -> bool:
    """A JSON number (true and false are not)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _finite(value) -> bool:
    """A JSON number that is neither NaN nor infinite (an axis limit or position)."""
    return _number(value) and math.isfinite(value)


def _count(value) -> bool:
    """A non-negative integer below 2^62: numpy's int64 holds it, and sums of it."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2 ** 62


def check_metrics(metrics, where: Path) -> None:
    """Raise LstmcliError naming `where` unless `metrics` is a metrics.json that plot_run can draw:
    an object whose history is a list of objects with a finite epoch and numbers (or nulls) for the
    curves, and whose test report, if any, passes check_report."""
    if not isinstance(metrics, dict):
        raise _bad(where, "is not a JSON object")
    history = metrics.get("history")
    if history is not None and not isinstance(history, list):
        raise _bad(where, "\"history\" is not a list")
    for i, entry in enumerate(history or []):
        if not isinstance(entry, dict):
            raise _bad(where, f"history[{i}] is not an object")
        if not _finite(entry.get("epoch")):
            raise _bad(where, f"history[{i}].epoch is not a number")
        for key in CURVES:
            value = entry.get(key)
            if value is not None and not (_finite(value) if key == "lr" else _number(value)):
                raise _bad(where, f"history[{i}].{key} is not a number: {json.dumps(value)[:40]}")
    if metrics.get("best_epoch") is not None and not _finite(metrics["best_epoch"]):
        raise _bad(where, "\"best_epoch\" is not a number")
    if metrics.get("test") is not None:
        check_report(metrics["test"], where, "test")


def check_report(report, where: Path, key: str) -> None:
    """Raise LstmcliError naming `where` unless `report` (its `key`) holds what confusion_matrix draws:
    a list of label names, numbers for accuracy and n, and a confusion in either form of metrics.py."""
    if not isinstance(report, dict):
        raise _bad(where, f"\"{key}\" is not an object")
    labels = report.get("labels")
    if not isinstance(labels, list) or not labels or not all(isinstance(n, str) for n in labels):
        raise _bad(where, f"\"{key}\".labels is not a list of label names")
    for field in ("accuracy", "n"):
        if report.get(field) is not None and not _number(report[field]):
            raise _bad(where, f"\"{key}\".{field} is not a number")
    if report.get("multi_label"):
        from lstmcli.evaluation.label_plot import check_label_report
        return check_label_report(report, where, key)
    k = len(labels)
    dense, sparse = report.get("confusion"), report.get("confusion_sparse")
    if dense is not None:
        if not (isinstance(dense, list) and len(dense) == k
                and all(isinstance(row, list) and len(row) == k and all(map(_count, row)) for row in dense)):
            raise _bad(where, f"\"{key}\".confusion is not a {k} x {k} matrix of counts (one row and "
                              f"column per label)")
    elif sparse is not None:
        if not isinstance(sparse, list) or not all(_sparse_cell(c, k) for c in sparse):
            raise _bad(where, f"\"{key}\".confusion_sparse is not a list of [true, predicted, count] with "
                              f"indices in 0..{k - 1} and counts >= 0")
    else:
        raise _bad(where, f"\"{key}\" has no confusion (neither \"confusion\" nor \"confusion_sparse\")")


def _sparse_cell(cell, k: int) -> bool:
    """[true, predicted, count] with both indices among the k labels."""
    return (isinstance(cell, list) and len(cell) == 3 and all(map(_count, cell))
            and cell[0] < k and cell[1] < k)
