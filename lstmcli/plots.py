"""Pictures of a run: learning curves and confusion matrices as PNG files, drawn from metrics JSON alone.

matplotlib is imported inside the functions that draw, and only its object-oriented API is used
(Figure + the Agg canvas): no pyplot state, no display, and nothing paid by commands that never draw
(`predict`'s cold start). Files are written whole or not at all (rendered in memory, then renamed).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from .errors import LstmcliError
from .fsutil import write_bytes

LEARNING_CURVES = "learning_curves.png"
CONFUSION = "confusion_matrix.png"
MAX_LABEL_CHARS = 18


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    write_bytes(path, buffer.getvalue())
    return path


def _short(name: str) -> str:
    return name if len(name) <= MAX_LABEL_CHARS else name[: MAX_LABEL_CHARS - 1] + "…"


def learning_curves(metrics: dict, path: Path, title: str = "") -> Path:
    """Train/val loss, train/val accuracy and the learning rate per epoch, the best epoch marked."""
    from matplotlib.ticker import MaxNLocator

    history = metrics.get("history") or []
    if not history:
        raise LstmcliError("no finished epoch to plot yet (metrics.json has an empty history)")
    epochs = [h["epoch"] for h in history]
    best = metrics.get("best_epoch")
    fig = _figure(13, 3.8)
    axes = fig.subplots(1, 3)
    panels = [("loss", "loss"), ("accuracy", "accuracy")]
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
    fig.suptitle(title or "learning curves")
    return _save(fig, path)


def confusion_matrix(report: dict, path: Path, title: str = "") -> Path:
    """Counts and row-normalised shares (rows: true labels, columns: predicted), label names on both axes."""
    import numpy as np

    names = [_short(str(n)) for n in report["labels"]]
    counts = np.asarray(report["confusion"], dtype=np.int64)
    k = len(names)
    shares = counts / np.maximum(counts.sum(1, keepdims=True), 1)
    side = max(4.0, 0.5 * k + 2.2)
    fig = _figure(2 * side + 1.0, side + 0.6)
    font = max(6.0, min(10.0, 110.0 / k))
    for ax, values, fmt, name in zip(fig.subplots(1, 2), (counts, shares), ("{:d}", "{:.0%}"),
                                     ("counts", "share of each true label"), strict=True):
        top = 1 if values is shares else max(int(values.max()), 1)
        image = ax.imshow(values, cmap="Blues", vmin=0, vmax=top)
        fig.colorbar(image, ax=ax, shrink=0.8)
        for i in range(k):
            for j in range(k):
                v = values[i, j]
                dark = v / top > 0.55  # white text on the darker half of the colour map
                ax.text(j, i, fmt.format(int(v) if values is counts else float(v)), ha="center",
                        va="center", fontsize=font, color="white" if dark else "black")
        ax.set_xticks(range(k), names, rotation=45 if k > 2 else 0, ha="right" if k > 2 else "center",
                      fontsize=font + 1)
        ax.set_yticks(range(k), names, fontsize=font + 1)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name)
    accuracy = report.get("accuracy")
    n = report.get("n", int(counts.sum()))
    subtitle = f"accuracy {accuracy:.2%}, n={n:,}" if accuracy is not None else ""
    fig.suptitle(f"{title}  ({subtitle})" if title and subtitle else title or subtitle)
    return _save(fig, path)


def plot_run(run_dir: Path) -> list[Path]:
    """Draw a run folder's pictures from its metrics.json: learning curves, and the confusion matrix of
    the test split (of best/'s validation when the run has not reached its test yet)."""
    run_dir = Path(run_dir)
    try:
        metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise LstmcliError(f"cannot plot {run_dir}: no readable metrics.json ({exc})") from None
    name = run_dir.resolve().name
    written = [learning_curves(metrics, run_dir / LEARNING_CURVES, f"{name}: learning curves")]
    report, split = metrics.get("test"), "test"
    if report is None:
        try:
            best = json.loads((run_dir / "best" / "metrics.json").read_text(encoding="utf-8"))
            report, split = best["val"], "val"
        except (OSError, ValueError, KeyError, TypeError):
            report = None
    if report:
        written.append(confusion_matrix(report, run_dir / CONFUSION, f"{name}: {split} split, best/"))
    return written
