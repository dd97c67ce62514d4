"""What the commands write and print besides their results: an evaluation's files beside its checkpoint,
and the tables of `eval`, `calibrate` and `bench`. The library computes and returns reports; this
module (with cli.py and api.py, the entry layers) turns them into files and text.
"""

from __future__ import annotations

from pathlib import Path

from lstmcli.evaluation import plots
from lstmcli.evaluation.metrics import DENSE_LABELS
from lstmcli.fsutil import write_json


def write_eval_files(report: dict) -> dict:
    """Write an evaluate_checkpoint report beside its checkpoint as eval-SPLIT.json, its confusion matrix
    drawn in confusion-SPLIT.png; returns the report with their paths under "files"."""
    checkpoint = Path(report["checkpoint"])
    folder, split = checkpoint.resolve().parent, report["split"]
    # an export's figures beside the checkpoint's own: eval-test.json, eval-test.onnx.json, ...int8.json
    tag = "" if report.get("backend", "torch") == "torch" else f".{report.get('quantize') or 'onnx'}"
    picture = "label_f1_png" if report.get("multi_label") else "confusion_png"
    files = {"json": str(folder / f"eval-{split}{tag}.json"),
             picture: str(folder / f"{picture[:-4].replace('_', '-')}-{split}{tag}.png")}
    report = {**report, "files": files}
    write_json(Path(files["json"]), report)
    title = f"{report['dataset']} [{split}] with {folder.name}/{checkpoint.name}"
    plots.report_picture(report, folder, title, f"{split}{tag}")
    return report


def format_report(report: dict, title: str = "") -> str:
    """`lstmcli eval`'s table of a metrics report (evaluation/metrics.py): its confusion printed up to
    DENSE_LABELS labels, beyond them a line saying where its sparse form is."""
    names = report["labels"]
    width = max(8, *(len(n) for n in names))
    lines = [title] if title else []
    loss = f"  loss {report['loss']:.4f}" if "loss" in report else ""
    if report.get("multi_label"):
        return "\n".join(lines + _multi_label_lines(report, names, width, loss))
    lines.append(f"accuracy {report['accuracy']:.4f}  macro-F1 {report['macro_f1']:.4f}{loss}  "
                 f"(n={report['n']})")
    if report.get("threshold") is not None:
        lines.append(f"decided at threshold {report['threshold']:.4f} on p({report['positive_label']})")
    if report.get("roc_auc") is not None:
        best = report["best_threshold"]
        lines.append(f"ROC-AUC {report['roc_auc']:.4f}  best F1 of {report['positive_label']} "
                     f"{best['f1']:.4f} at threshold {best['threshold']:.4f} (precision "
                     f"{best['precision']:.4f}, recall {best['recall']:.4f})")
    lines.append("")
    lines.append(f"{'class':<{width}}  precision  recall      f1  support")
    for name in names:
        c = report["per_class"][name]
        lines.append(f"{name:<{width}}  {c['precision']:9.4f}  {c['recall']:6.4f}  {c['f1']:6.4f}  "
                     f"{c['support']:7d}")
    lines.append("")
    return "\n".join(lines + _confusion_lines(report, names, width))


def _multi_label_lines(report: dict, names: list[str], width: int, loss: str) -> list[str]:
    """A multi-label report's table: the pooled figures, then each label's with its threshold."""
    lines = [f"micro-F1 {report['micro_f1']:.4f}  macro-F1 {report['macro_f1']:.4f}  subset accuracy "
             f"{report['accuracy']:.4f}  Hamming loss {report['hamming_loss']:.4f}{loss}  (n={report['n']})",
             "", f"{'label':<{width}}  threshold  precision  recall      f1  support"]
    for name in names:
        c = report["per_class"][name]
        lines.append(f"{name:<{width}}  {report['thresholds'][name]:9.4f}  {c['precision']:9.4f}  "
                     f"{c['recall']:6.4f}  {c['f1']:6.4f}  {c['support']:7d}")
    return lines


def _confusion_lines(report: dict, names: list[str], width: int) -> list[str]:
    """The confusion table (rows: true, columns: predicted), or the note that replaces it."""
    if len(names) > DENSE_LABELS or "confusion" not in report:
        where = (report.get("files") or {}).get("json") or "the JSON report (eval --json, eval-SPLIT.json)"
        cells = len(report.get("confusion_sparse") or [])
        return [f"confusion: {len(names):,} labels, too many to print (more than {DENSE_LABELS}); its "
                f"{cells:,} non-zero cells are in {where} under \"confusion_sparse\" as [true, predicted, "
                f"count]"]
    lines = ["confusion (rows: true, columns: predicted)"]
    cell = max(7, *(len(str(v)) for row in report["confusion"] for v in row))
    lines.append(" " * width + "  " + " ".join(f"{n[:cell]:>{cell}}" for n in names))
    for name, row in zip(names, report["confusion"], strict=True):
        lines.append(f"{name:<{width}}  " + " ".join(f"{v:>{cell}}" for v in row))
    return lines


def format_calibration(report: dict) -> str:
    """`lstmcli calibrate`'s table: each branch's weight, and the split's log-loss and accuracy."""
    b, a = report["before"], report["after"]
    lines = [f"{report['checkpoint']}: calibrated on {report['dataset']} [val], n={report['split_size']}",
             f"{'branch':<12}{'weight':>9}{'was':>9}"]
    rows = zip(report["branches"], report["weights"], report["weights_before"], strict=True)
    lines += [f"{n:<12}{w:>9.4f}{was:>9.4f}" for n, w, was in rows]
    lines += [f"{'log-loss':<12}{b['loss']:>9.4f} -> {a['loss']:.4f}",
              f"{'accuracy':<12}{b['accuracy']:>9.4f} -> {a['accuracy']:.4f}"]
    return "\n".join(lines)


def format_bench(report: dict) -> str:
    """`lstmcli bench`'s table: tokens/s and share of the FLOP limit per cell x impl, the ratios."""
    s = report["shape"]
    lines = [f"tokens/s, median of {s['repeats']} x {s['batches']} batches: embedding {s['embedding_dim']}, "
             f"hidden {s['hidden_size']}, batch {s['batch_size']}, "
             f"lengths {s['min_length']}-{s['max_length']}, "
             f"layers {s['num_layers']}{', bidirectional' if s['bidirectional'] else ''}; "
             f"{report['device']}, {report['threads']} threads, torch {report['torch']}"
             + (f", scratch time loops in {loops}" if (loops := report["scratch_loops"]) != "none" else ""),
             f"float32 GEMM peak measured in this run: {report['sgemm_flops'] / 1e9:,.1f} GFLOP/s, the "
             f"highest of {len(samples := report['sgemm_samples'])} samples ({min(samples) / 1e9:,.1f} to "
             f"{max(samples) / 1e9:,.1f}); share = tokens/s x encoder FLOPs per token / that peak", "",
             f"{'cell':<8} {'impl':<8} {'train':>10} {'share':>6} {'infer':>10} {'share':>6}"]
    for cell, by_impl in report["results"].items():
        f = by_impl["flops_per_token"]
        for impl, r in by_impl.items():
            if impl == "ratio":
                lines.append(f"{'':<8} {'ratio':<8} {r['train']:>9.2f}x {'':>6} {r['infer']:>9.2f}x")
            elif impl != "flops_per_token":
                lines.append(f"{cell:<8} {impl:<8} {r['train']:>10,.0f} {r['train_share']:>6.1%} "
                             f"{r['infer']:>10,.0f} {r['infer_share']:>6.1%}")
        lines.append(f"{'':<8} {'MFLOP/token':<11} {f['train'] / 1e6:>7.2f} {'':>6} "
                     f"{f['infer'] / 1e6:>10.2f}")
    return "\n".join(lines)
