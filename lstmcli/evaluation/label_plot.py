"""A multi-label report's picture (in place of a confusion matrix, which a set of labels per text does
not have): each label's F1 as a bar, its support (texts that have it) beside it, the labels sorted by
support and at most plots.SHOWN_LABELS of them, so that the canvas does not grow with the labels."""

from __future__ import annotations

from pathlib import Path

from lstmcli.evaluation.plots import SHOWN_LABELS, _bad, _count, _number, _short, new_figure, save_figure

LABEL_F1 = "label_f1.png"


def label_f1(report: dict, path: Path, title: str = "") -> Path:
    """Horizontal bars of each label's precision-recall F1 and, on a second axis, its support."""
    per = report["per_class"]
    names = sorted(report["labels"], key=lambda n: (-per[n]["support"], report["labels"].index(n)))
    shown = names[:SHOWN_LABELS]
    f1 = [per[n]["f1"] for n in shown]
    support = [per[n]["support"] for n in shown]
    fig = new_figure(10, max(2.5, 0.32 * len(shown) + 1.4))
    left, right = fig.subplots(1, 2, sharey=True, width_ratios=[3, 2])
    rows = list(range(len(shown)))
    left.barh(rows, f1, color="tab:blue")
    left.set_xlim(0, 1)
    left.set_xlabel("F1")
    left.set_yticks(rows, [_short(str(n)) for n in shown])
    left.invert_yaxis()  # the most frequent label on top
    for y, value in zip(rows, f1, strict=True):  # inside the bar's end where the bar reaches the edge
        inside = value > 0.85
        left.text(value - 0.01 if inside else value + 0.01, y, f"{value:.2f}", va="center", fontsize=8,
                  ha="right" if inside else "left", color="white" if inside else "black")
    right.barh(rows, support, color="tab:gray")
    for y, count in zip(rows, support, strict=True):
        right.text(count, y, f" {count:,}", va="center", fontsize=8)
    right.margins(x=0.15)  # room for the counts
    right.set_xlabel("support (texts with the label)")
    more = f"; {len(shown)} most frequent of {len(names):,} labels" if len(shown) < len(names) else ""
    subtitle = (f"micro-F1 {report['micro_f1']:.2%}, macro-F1 {report['macro_f1']:.2%}, subset accuracy "
                f"{report['accuracy']:.2%}, n={report['n']:,}{more}")
    fig.suptitle(f"{title}  ({subtitle})" if title else subtitle, parse_math=False)
    return save_figure(fig, path)


def check_label_report(report: dict, where: Path, key: str) -> None:
    """Raise LstmcliError naming `where` unless a multi-label `report` holds what label_f1 draws."""
    labels = report["labels"]  # (plots.check_report checked the names)
    for field in ("micro_f1", "macro_f1", "accuracy", "n"):
        if not _number(report.get(field)):
            raise _bad(where, f"\"{key}\".{field} is not a number")
    per = report.get("per_class")
    if not isinstance(per, dict) or not all(
            isinstance(per.get(n), dict) and _number(per[n].get("f1")) and _count(per[n].get("support"))
            for n in labels):
        raise _bad(where, f"\"{key}\".per_class does not give each label an f1 and a support")
