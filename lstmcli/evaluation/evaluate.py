"""Evaluating a model: loss and classification metrics on every example of a split, and the same for a
checkpoint on a split of its dataset, or on every row of another file (`lstmcli eval`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from lstmcli import __version__, checkpoint
from lstmcli.data.batches import Truncation, collate, sorted_batches, truncated_lengths
from lstmcli.data.encode import EncodedSplit, encode_dataset, encode_file
from lstmcli.errors import LstmcliError
from lstmcli.evaluation.metrics import (
    best_f1_threshold,
    merge_pairs,
    pair_counts,
    report_from_pairs,
    roc_auc,
)
from lstmcli.evaluation.multilabel import fit_thresholds, label_counts, report_from_counts, threshold_vector
from lstmcli.evaluation.thresholds import check_threshold
from lstmcli.models.loss import classification_loss
from lstmcli.progress import Progress
from lstmcli.runtime.device import resolve_device
from lstmcli.runtime.distributed import SINGLE, Dist, all_reduce_sum, gather
from lstmcli.runtime.onnx_model import OnnxExport, OnnxModel


def rank_batches(split: EncodedSplit, batch_size: int, cut: Truncation, device: torch.device,
                 dist: Dist = SINGLE, desc: str = "evaluating"):
    """This rank's share of `split` in length-sorted batches, collated onto `device`: every
    world_size-th batch from its rank's, so that the ranks together see every example once. Progress
    (lstmcli/progress.py) is labelled `desc`; what follows it reports the result, so it ends silently."""
    mine = sorted_batches(truncated_lengths(split, cut.length), batch_size)[dist.rank::dist.world_size]
    with Progress(desc, sum(len(indices) for indices in mine), quiet_end=True) as progress:
        for indices in mine:
            yield collate(split, indices, cut).to(device)
            progress.update(len(indices))


@torch.no_grad()
def evaluate(model, split: EncodedSplit, device: torch.device, batch_size: int, cut: Truncation,
             label_names: list[str], dist: Dist = SINGLE, threshold: float | None = None,
             desc: str = "evaluating", thresholds: dict | None = None) -> dict:
    """Loss and classification metrics of `model` on every example of `split`.

    With two labels the report adds the ROC-AUC of the second label's probability and the threshold
    that maximises its F1 here; `threshold` decides by that probability (>= threshold: the second
    label) instead of the most probable label. Under torchrun each rank runs every world_size-th of the
    same length-sorted batches and the counts (and binary scores) are combined, so the metrics are the
    single process's and the loss differs only by the order of its float sum. The confusion is counted
    as (true, predicted) pairs (metrics.pair_counts), so memory and time grow with the examples and the
    labels, never with the labels squared.

    A multi-label split gets evaluate_multi_label's report instead (`thresholds`: the checkpoint's
    {label: t}; `threshold` overrides them all)."""
    if split.multi_label:
        return evaluate_multi_label(model, split, device, batch_size, cut, label_names, dist,
                                    threshold_vector(label_names, thresholds, threshold), desc)
    model.eval()
    k = len(label_names)
    pairs, loss_sum, scores, targets = [], 0.0, [], []
    for batch in rank_batches(split, batch_size, cut, device, dist, desc):
        logits = model(batch.ids, batch.lengths)
        loss_sum += float(classification_loss(logits, batch.labels, reduction="sum"))
        positive = logits.softmax(1)[:, 1] if k == 2 else None  # (B,) the second label's probability
        preds = logits.argmax(1) if threshold is None else (positive >= threshold).long()
        pairs.append(pair_counts(batch.labels.cpu(), preds.cpu(), k))
        if k == 2:
            scores.append(positive.float().cpu())
            targets.append(batch.labels.cpu())
    # each rank's distinct pairs, not a k x k matrix, travel: a dense all-reduce is k^2 whatever the data
    confusion = merge_pairs(gather(dist, merge_pairs(pairs)))
    loss_sum = float(all_reduce_sum(dist, torch.tensor([loss_sum], dtype=torch.float64)))
    report = report_from_pairs(confusion, label_names, loss=loss_sum / max(len(split), 1))
    if k == 2:
        none = [torch.zeros(0)], [torch.zeros(0, dtype=torch.int64)]
        ranks = gather(dist, (torch.cat(scores or none[0]), torch.cat(targets or none[1])))
        s, y = (torch.cat([r[i] for r in ranks]) for i in (0, 1))
        report |= {"positive_label": label_names[1], "threshold": threshold, "roc_auc": roc_auc(s, y.long()),
                   "best_threshold": best_f1_threshold(s, y.long())}
    return report


@torch.no_grad()
def evaluate_multi_label(model, split: EncodedSplit, device: torch.device, batch_size: int, cut: Truncation,
                         label_names: list[str], dist: Dist, thresholds: torch.Tensor,
                         desc: str = "evaluating") -> dict:
    """A multi-label model's loss and metrics on every example of `split` (evaluation/multilabel.py), each
    label decided at its entry of `thresholds` (C,), with the F1-best threshold of each label here.
    Under torchrun the counts are summed and the probabilities gathered, as evaluate() does."""
    model.eval()
    counts, loss_sum, scores, targets = torch.zeros(3 * len(label_names) + 1, dtype=torch.int64), 0.0, [], []
    for batch in rank_batches(split, batch_size, cut, device, dist, desc):
        logits = model(batch.ids, batch.lengths)
        loss_sum += float(classification_loss(logits, batch.labels, reduction="sum"))
        probabilities = logits.float().sigmoid().cpu()  # (B, C)
        counts += label_counts(probabilities, batch.labels.cpu(), thresholds)
        scores.append(probabilities)
        targets.append(batch.labels.cpu())
    totals = all_reduce_sum(dist, torch.cat([counts.double(), torch.tensor([loss_sum], dtype=torch.float64)]))
    k = len(label_names)
    none = torch.zeros(0, k), torch.zeros(0, k, dtype=torch.uint8)
    ranks = gather(dist, (torch.cat(scores or [none[0]]), torch.cat(targets or [none[1]])))
    s, y = (torch.cat([r[i] for r in ranks]) for i in (0, 1))
    report = report_from_counts(totals[:-1].long(), len(split), label_names, thresholds,
                                loss=float(totals[-1]) / max(len(split), 1))
    return report | {"fitted_thresholds": fit_thresholds(s, y, label_names)}


def evaluate_checkpoint(checkpoint_dir: Path, split: str = "test", dataset: str | None = None,
                        data_dir: str | None = None, batch_size: int | None = None, device: str = "auto",
                        impl: str | None = None, precision: str | None = None,
                        threshold: float | None = None, columns: dict[str, str] | None = None,
                        export: OnnxExport | None = None) -> dict:
    """The report of `checkpoint_dir` on a split: evaluate()'s metrics, plus what was evaluated and how
    (checkpoint, dataset, split, impl, precision, device, torch). Writes no report (the data's token
    cache aside: encode_dataset keeps one).

    With `dataset` a single file, every row of it is evaluated (`split` is then the file's stem);
    otherwise the split is carved exactly as in training, from the checkpoint's data settings, reading
    the data from `data_dir` (default: the folder the checkpoint was trained from). `export`: evaluate
    this export of the checkpoint's weights in onnxruntime instead of the weights in PyTorch.
    """
    dev = resolve_device(device)
    ck = checkpoint.load(checkpoint_dir, str(dev), impl, precision)
    model = ck.model
    how = {"backend": "torch", "impl": ck.model.spec.impl, "precision": ck.config.model.precision.value}
    if export is not None:
        model = OnnxModel(export)
        how = {"backend": "onnx", "model": str(export.model), "quantize": model.quantize}
    if threshold is not None:
        check_threshold(threshold, ck.label_names, ck.config.data.multi_label)
    data_cfg = dataclasses.replace(ck.config.data, data_dir=data_dir or ck.config.data.data_dir,
                                   dataset=dataset or ck.config.data.dataset, **(columns or {}))
    if dataset and Path(dataset).is_file():
        encoded, split = encode_file(Path(dataset), data_cfg, ck.vocab, ck.label_names), Path(dataset).stem
    else:
        encoded = encode_dataset(data_cfg, vocab=ck.vocab, label_names=ck.label_names).splits[split]
    if len(encoded) == 0:
        raise LstmcliError(f"split '{split}' of {data_cfg.dataset} has no examples")
    report = evaluate(model, encoded, dev, batch_size or ck.config.train.batch_size,
                      Truncation.for_inference(ck.config.data), ck.label_names, threshold=threshold,
                      thresholds=ck.metrics.get("thresholds"),
                      desc=f"evaluating {split}")
    return {"checkpoint": str(ck.path), "dataset": data_cfg.dataset, "split": split,
            **how, **report,
            "device": str(dev), "torch": torch.__version__, "lstmcli": __version__}
