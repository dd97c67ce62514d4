"""ULMFiT's fine-tuning controls (slanted triangular and one-cycle schedules, discriminative learning
rates, gradual unfreezing) and Miyato et al.'s adversarial training (AT, VAT) on the embedded text."""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lstmcli.config import ConfigError, resolve
from lstmcli.data.batches import Truncation, collate
from lstmcli.data.encode import EncodedSplit
from lstmcli.models.classifier import TextClassifier
from lstmcli.models.spec import ModelSpec
from lstmcli.runtime.distributed import SINGLE
from lstmcli.training import adversarial
from lstmcli.training.fit import _step_loss
from lstmcli.training.schedule import make_optimizer, make_scheduler

from .conftest import TINY, needs_native_bf16, ok, run
from .test_distributed import finished, torchrun
from .test_resume import finished as finished_proc
from .test_resume import lstmcli, same_run


def cfg_of(**train):
    return resolve(TINY, {"dataset": "imdb", **train})


def lrs(cfg, steps_per_epoch, model=None):
    model = model or torch.nn.Linear(2, 2)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, steps_per_epoch)
    out = []
    for _ in range(cfg.train.epochs * steps_per_epoch):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return out


def test_slanted_triangular_rises_to_lr_at_the_cut_then_falls_to_lr_over_32():
    cfg = cfg_of(scheduler="slanted_triangular", epochs=4, lr=0.01)
    got = [g[0] for g in lrs(cfg, 25)]  # 100 steps: the cut at step 10
    assert got[0] == pytest.approx(0.01 / 32)
    assert got[10] == pytest.approx(0.01) and max(got) == got[10]
    assert got[5] == pytest.approx(0.01 * (1 + 0.5 * 31) / 32)
    assert got[-1] == pytest.approx(0.01 / 32)
    assert all(a < b for a, b in zip(got[:10], got[1:11], strict=True))
    assert all(a > b for a, b in zip(got[10:-1], got[11:], strict=True))


def test_one_cycle_warms_up_over_30_percent_then_anneals_by_cosine():
    cfg = cfg_of(scheduler="one_cycle", epochs=2, lr=0.01)
    got = [g[0] for g in lrs(cfg, 50)]  # 100 steps: the peak at step 30
    assert got[0] == pytest.approx(0.01 / 25)
    assert got[30] == pytest.approx(0.01) and max(got) == got[30]
    assert got[-1] == pytest.approx(0.01 * 1e-4)
    mid = 30 + (99 - 30) / 2
    assert got[round(mid)] == pytest.approx(0.01 * (1e-4 + (1 - 1e-4) * 0.5 * (1 + math.cos(
        math.pi * (round(mid) - 30) / 69))))


def spec(impl, layers, bidirectional, ngrams=0):
    return ModelSpec(vocab_size=30, num_classes=3, embedding_dim=5, hidden_size=4, num_layers=layers,
                     bidirectional=bidirectional, impl=impl, ngram_buckets=ngrams, ngram_dim=3)


@pytest.mark.parametrize("impl", ["scratch", "builtin"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_layer_groups_hold_every_parameter_once_top_down(impl, layers, bidirectional):
    model = TextClassifier(spec(impl, layers, bidirectional, ngrams=16))
    groups = model.layer_groups()
    assert len(groups) == layers + 2
    ids = [id(p) for g in groups for p in g]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each exactly once
    names = {id(p): n for n, p in model.named_parameters()}
    top, *encoder, bottom = [[names[id(p)] for p in g] for g in groups]
    assert all(n.split(".")[0] in ("head", "ngrams", "ngram_head") for n in top)
    assert any(n.startswith("ngram_head") for n in top) and any(n.startswith("ngrams") for n in top)
    assert bottom == ["embedding.weight"]
    per_layer = 4 * (2 if bidirectional else 1)
    for depth, group in enumerate(encoder):
        layer = layers - 1 - depth
        assert len(group) == per_layer
        assert all(n.startswith("encoder.") and (f"_l{layer}" in n) for n in group)


def test_each_group_trains_at_lr_times_decay_to_its_depth():
    model = TextClassifier(spec("scratch", 2, True))
    cfg = cfg_of(lr=0.01, layer_lr_decay=0.5)
    for optimizer_name in ("adam", "sgd"):
        cfg.train.optimizer = type(cfg.train.optimizer)(optimizer_name)
        optimizer = make_optimizer(model, cfg)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.005, 0.0025, 0.00125])
        assert [g["layer_depth"] for g in optimizer.param_groups] == [0, 1, 2, 3]
    model.embedding.weight.requires_grad_(False)  # freeze_embeddings: left out
    optimizer = make_optimizer(model, cfg)
    assert len(optimizer.param_groups) == 3
    assert all(p is not model.embedding.weight for g in optimizer.param_groups for p in g["params"])
    # the default: one group, as before (so that old runs' optimizer state loads)
    assert len(make_optimizer(model, cfg_of(lr=0.01)).param_groups) == 1


def test_gradual_unfreezing_zeroes_the_groups_below_by_epoch():
    model = TextClassifier(spec("scratch", 2, False))
    cfg = cfg_of(lr=0.01, epochs=4, gradual_unfreezing=True)
    got = lrs(cfg, 3, model)
    for step, row in enumerate(got):
        epoch = step // 3  # 0-based: groups 0..epoch train
        assert [lr > 0 for lr in row] == [d <= epoch for d in range(4)]


def test_bad_values_name_their_key():
    for key, value in (("layer_lr_decay", 0.0), ("layer_lr_decay", 1.5), ("adversarial_epsilon", -1.0),
                       ("adversarial_weight", -0.5)):
        with pytest.raises(ConfigError, match=f"train.{key}"):
            cfg_of(**{key: value})
    with pytest.raises(ConfigError, match="train.gradual_unfreezing"):
        cfg_of(gradual_unfreezing=True, scheduler="plateau")
    with pytest.raises(ConfigError, match="train.warmup_steps"):
        cfg_of(warmup_steps=3, scheduler="slanted_triangular")
    with pytest.raises(ConfigError, match="adversarial"):
        cfg_of(adversarial="fgsm")


def test_help_lists_the_controls(monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    out = run("train", "--help").stdout
    for flag in ("--layer-lr-decay", "--gradual-unfreezing", "--adversarial-epsilon", "--adversarial-weight",
                 "slanted_triangular", "one_cycle"):
        assert flag in out


ARGS = ["--config", TINY, "--dataset", "imdb", "--epochs", "3", "--batch-size", "4",
        "--max-train-examples", "0", "--max-eval-examples", "0", "--num-layers", "2", "--no-calibrate"]


def test_gradual_unfreezing_trains_only_the_top_group_in_epoch_one_then_the_next(mirror, workdir):
    # lr 0 would make Adam's untouched weights equal bit for bit: compare to the initial weights
    for epochs in (1, 2):
        ok(run("train", *ARGS, "--epochs", str(epochs), "--gradual-unfreezing", "--quiet",
               "--weight-decay", "0.01", "--out", f"e{epochs}"))
    ok(run("train", *ARGS, "--epochs", "1", "--lr", "1e-30", "--quiet", "--out", "init"))
    init, e1, e2 = (load_file(f"{d}/last/model.safetensors") for d in ("init", "e1", "e2"))

    def changed(a, b):
        return {n for n in a if n != "branch_weights" and not torch.equal(a[n], b[n])}

    top = {n for n in init if n.startswith("head.")}
    layer2 = {n for n in init if n.startswith("encoder.") and "_l1" in n}
    assert changed(init, e1) == top
    assert changed(init, e2) == top | layer2


def test_1e30_lr_leaves_the_weights_as_initialised(mirror, workdir):
    """The yardstick above: a run at lr 1e-30 keeps every weight bit for bit (Adam's step is lr-sized)."""
    ok(run("train", *ARGS, "--epochs", "1", "--lr", "1e-30", "--quiet", "--out", "a"))
    ok(run("train", *ARGS, "--epochs", "1", "--lr", "2e-30", "--quiet", "--out", "b"))
    a, b = (load_file(f"{d}/last/model.safetensors") for d in ("a", "b"))
    assert all(torch.equal(a[n], b[n]) for n in a)


RESUME = ["--config", TINY, "--dataset", "imdb", "--epochs", "3", "--batch-size", "2",
          "--max-train-examples", "0", "--max-eval-examples", "0", "--num-layers", "2", "--dropout", "0.3",
          "--log-every", "1", "--scheduler", "slanted_triangular", "--layer-lr-decay", "0.5",
          "--gradual-unfreezing", "--adversarial", "vat", "--adversarial-epsilon", "2"]


def test_interrupted_mid_epoch_with_these_options_resumes_bit_exactly(mirror, workdir):
    import signal
    code, _, err = finished_proc(lstmcli("train", *RESUME, "--out", "ref"))
    assert code == 0, err
    proc = lstmcli("train", *RESUME, "--out", "run")
    for line in proc.stderr:
        if line.startswith("epoch 2 step 5/"):
            proc.send_signal(signal.SIGINT)
            break
    code, _, err = finished_proc(proc)
    assert code == 130, err
    code, _, err = finished_proc(lstmcli("train", "--resume", "run"))
    assert code == 0, err
    same_run(Path("ref"), Path("run"))


def batch_of(multi_label=False):
    torch.manual_seed(0)
    labels = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0]]) if multi_label else torch.tensor([1, 0, 2])
    split = EncodedSplit(torch.randint(2, 30, (12,), dtype=torch.int32), torch.tensor([0, 5, 7, 12]), labels)
    return split, torch.tensor([2, 0, 1])


@pytest.mark.parametrize("impl", ["scratch", "builtin"])
@pytest.mark.parametrize("mode", ["at", "vat"])
@pytest.mark.parametrize("multi_label", [False, True])
def test_the_perturbation_has_epsilon_times_rms_norm_per_text(impl, mode, multi_label):
    model = TextClassifier(spec(impl, 2, True))
    split, rows = batch_of(multi_label)
    batch = collate(split, rows)
    clean = model(batch.ids, batch.lengths, parts=True)[0].detach()
    r = adversarial.perturbation(model, mode, 3.0, batch.ids, batch.lengths, batch.labels, None, clean)
    rms = adversarial.embedding_rms(model, batch.ids, batch.lengths)
    norms = r.flatten(1).norm(dim=1)
    assert norms == pytest.approx([3.0 * float(rms)] * 3, rel=1e-5)
    for i, n in enumerate(batch.lengths.tolist()):  # nothing on the padding
        assert not r[i, n:].any()
    assert all(p.grad is None for p in model.parameters())  # no parameter gradient accumulated


@pytest.mark.parametrize("impl", ["scratch", "builtin"])
@pytest.mark.parametrize("multi_label", [False, True])
def test_with_epsilon_0_at_is_the_loss_times_1_plus_w_and_vat_the_loss(impl, multi_label):
    model = TextClassifier(spec(impl, 1, False, ngrams=16))  # dropout 0: both halves see the same model
    split, rows = batch_of(multi_label)
    plain, totals = _step_loss(model, split, rows, Truncation(), torch.device("cpu"), SINGLE)
    at, at_totals = _step_loss(model, split, rows, Truncation(), torch.device("cpu"), SINGLE,
                               adversarial=("at", 0.0, 0.7))
    vat, vat_totals = _step_loss(model, split, rows, Truncation(), torch.device("cpu"), SINGLE,
                                 adversarial=("vat", 0.0, 0.7))
    # the adversarial term is the encoder branch's loss only (the bag reads ids)
    batch = collate(split, rows)
    encoder = model(batch.ids, batch.lengths, parts=True)[0]
    from lstmcli.models.loss import classification_loss
    assert at.item() == pytest.approx(plain.item() + 0.7 * classification_loss(encoder, batch.labels).item(),
                                      rel=1e-6)
    assert vat.item() == pytest.approx(plain.item(), rel=1e-6, abs=1e-7)
    assert torch.allclose(at_totals, totals) and torch.allclose(vat_totals, totals)
    single = TextClassifier(spec(impl, 1, False))
    plain, _ = _step_loss(single, split, rows, Truncation(), torch.device("cpu"), SINGLE)
    at, _ = _step_loss(single, split, rows, Truncation(), torch.device("cpu"), SINGLE,
                       adversarial=("at", 0.0, 0.7))
    assert at.item() == pytest.approx(1.7 * plain.item(), rel=1e-6)


def test_kl_is_softmax_kl_or_summed_bernoulli_kl():
    p, q = torch.tensor([[0.3, -1.0, 2.0]]), torch.tensor([[0.1, 0.5, 1.0]])
    ps, qs = p.softmax(-1), q.softmax(-1)
    assert float(adversarial.kl_divergence(p, q, False)) == pytest.approx(float((ps * (ps / qs).log()).sum()))
    pb, qb = p.sigmoid(), q.sigmoid()
    bern = pb * (pb / qb).log() + (1 - pb) * ((1 - pb) / (1 - qb)).log()
    assert float(adversarial.kl_divergence(p, q, True)) == pytest.approx(float(bern.sum()), rel=1e-5)


@pytest.mark.parametrize("mode", ["at", "vat"])
@pytest.mark.parametrize("impl", ["scratch", "builtin"])
def test_a_cli_run_with_adversarial_training_finishes_with_finite_metrics(mirror, workdir, mode, impl):
    ok(run("train", *ARGS, "--epochs", "2", "--impl", impl, "--adversarial", mode, "--quiet", "--out", "r"))
    history = json.loads(Path("r/metrics.json").read_text())["history"]
    assert len(history) == 2
    assert all(math.isfinite(h[k]) for h in history for k in ("train_loss", "val_loss"))


def test_two_processes_train_with_gradual_unfreezing_and_vat(mirror, workdir):
    code, out, err = finished(torchrun(*ARGS, "--epochs", "2", "--gradual-unfreezing", "--adversarial", "vat",
                                       "--layer-lr-decay", "0.5", "--out", "two"))
    assert code == 0, err
    history = json.loads(Path("two/metrics.json").read_text())["history"]
    assert len(history) == 2 and all(math.isfinite(h["train_loss"]) for h in history)


@pytest.mark.cpu
@needs_native_bf16
@pytest.mark.parametrize("mode", ["at", "vat"])
def test_an_adversarial_step_under_bf16_autocast_gives_every_parameter_a_finite_gradient(mode):
    torch.manual_seed(0)
    model = TextClassifier(ModelSpec(vocab_size=30, num_classes=3, embedding_dim=5, hidden_size=4,
                                     impl="builtin", precision="bf16"))
    split, rows = batch_of()
    loss, _ = _step_loss(model, split, rows, Truncation(), torch.device("cpu"), SINGLE,
                         adversarial=(mode, 5.0, 1.0))
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
