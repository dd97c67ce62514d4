import copy

import pytest
import torch

from lstmcli.data.batches import Truncation, collate
from lstmcli.data.encode import EncodedSplit
from lstmcli.models.builtin import BuiltinEncoder
from lstmcli.models.classifier import TextClassifier, build_encoder
from lstmcli.models.lengths import last_real, reverse_within_length
from lstmcli.models.pooling import pool
from lstmcli.models.spec import ModelSpec
from lstmcli.runtime.distributed import SINGLE
from lstmcli.training.fit import _step_loss

from .conftest import assert_float32_close, float32_tolerance, needs_native_bf16, reference

pytestmark = pytest.mark.cpu  # the outcome depends on the CPU: also run under AVX2 emulation


def real_mask(lengths, T):
    return (torch.arange(T)[None, :] < lengths[:, None])[:, :, None]


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_padded_equals_packed_outputs_states_and_gradients(cell, layers, bidirectional):
    torch.manual_seed(0)
    padded = BuiltinEncoder(cell, 6, 5, layers, bidirectional, 0.0, pack="never")
    packed = BuiltinEncoder(cell, 6, 5, layers, bidirectional, 0.0, pack="always")
    packed.load_state_dict(padded.state_dict())
    exact = copy.deepcopy(packed).double()
    lengths = torch.tensor([7, 1, 4, 7, 2])
    x = torch.randn(5, 7, 6)
    weights = torch.randn(5, 7, 5 * (1 + bidirectional))
    mask = real_mask(lengths, 7)
    runs = {}
    for name, enc, dtype in (("padded", padded, torch.float32), ("packed", packed, torch.float32),
                             ("exact", exact, torch.float64)):
        xi = x.to(dtype, copy=True).requires_grad_()
        out, fin = enc(xi, lengths)
        out = out * mask  # padded runs leave values past each length; packed ones zeros
        ((out * weights.to(dtype)).sum() + fin.square().sum()).backward()
        runs[name] = {"output": out, "final": fin, "x.grad": xi.grad,
                      **{f"{n}.grad": p.grad for n, p in enc.named_parameters()}}
    for key, value in runs["padded"].items():
        assert_float32_close(value, runs["packed"][key], runs["exact"][key], key)


def test_state_dict_uses_pytorch_names():
    enc = BuiltinEncoder("lstm", 4, 3, 2, True)
    names = {"rnn.weight_ih_l0", "rnn.weight_hh_l1_reverse", "rnn.bias_ih_l1", "rnn.bias_hh_l0_reverse"}
    assert names <= set(enc.state_dict())


def test_reverse_within_length_is_an_involution_in_either_layout():
    x = torch.arange(12.).view(2, 6, 1)
    lengths = torch.tensor([4, 6])
    r = reverse_within_length(x, lengths)
    assert r[0, :, 0].tolist() == [3, 2, 1, 0, 4, 5]
    assert r[1, :, 0].tolist() == [11, 10, 9, 8, 7, 6]
    assert torch.equal(reverse_within_length(r, lengths), x)
    time_major = reverse_within_length(x.transpose(0, 1), lengths, time_dim=0)
    assert torch.equal(time_major, r.transpose(0, 1))
    assert last_real(x, lengths).flatten().tolist() == [3, 11]
    assert torch.equal(last_real(x.transpose(0, 1), lengths, time_dim=0), last_real(x, lengths))


@pytest.mark.parametrize("time_dim", [0, 1])
def test_reverse_within_length_passes_gradients_back_reversed(time_dim):
    """Its own backward (the same permutation of whole rows), checked against finite differences, on a
    non-contiguous input, with features in two dimensions."""
    torch.manual_seed(0)
    lengths = torch.tensor([7, 5, 2, 1])
    shape = (7, 4, 3, 2) if time_dim == 0 else (4, 7, 3, 2)
    x = torch.randn(*shape[:2][::-1], *shape[2:], dtype=torch.float64).transpose(0, 1).requires_grad_()
    assert not x.is_contiguous()
    assert torch.autograd.gradcheck(lambda z: reverse_within_length(z, lengths, time_dim), (x,))
    (grad,) = torch.autograd.grad(reverse_within_length(x, lengths, time_dim).sum(), x)
    assert torch.equal(grad, torch.ones_like(x))  # a permutation: each input read exactly once


@pytest.mark.parametrize("pooling", ["last", "mean", "max"])
@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_pooling_ignores_padding(pooling, cell):
    torch.manual_seed(1)
    spec = ModelSpec(vocab_size=50, num_classes=3, embedding_dim=8, hidden_size=6, cell=cell,
                     num_layers=2, bidirectional=True, pooling=pooling)
    model = TextClassifier(spec).eval()
    seq = torch.tensor([[5, 9, 2, 7]])
    alone = model(seq, torch.tensor([4]))
    batch = torch.tensor([[5, 9, 2, 7, 0, 0, 0, 0, 0], [3, 3, 4, 1, 8, 9, 10, 11, 12]])
    inside = model(batch, torch.tensor([4, 9]))
    # the same float32 computation in another batch: only the kernels' summation order may differ, over
    # at most 2 layers x 9 steps x (8 + 12) products
    tol = float32_tolerance(2 * 9 * 20, alone.abs().max().item())
    torch.testing.assert_close(inside[0], alone[0], atol=tol, rtol=0)


@pytest.mark.parametrize("impl,pack", [("builtin", "never"), ("builtin", "always"), ("scratch", "never")])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("layers", [1, 2])
def test_without_outputs_an_encoder_gives_none_and_the_same_final_states_and_gradients(impl, pack, cell,
                                                                                       layers):
    torch.manual_seed(0)
    spec = ModelSpec(vocab_size=10, num_classes=2, cell=cell, impl=impl, pack=pack, embedding_dim=6,
                     hidden_size=5, num_layers=layers, bidirectional=True)
    enc = build_encoder(spec)
    lengths = torch.tensor([7, 1, 4, 7, 2])  # not sorted: the scratch encoder's reordering runs too
    x = torch.randn(5, 7, 6)
    runs = []
    for outputs in (True, False):
        xi = x.clone().requires_grad_()
        enc.zero_grad()
        out, fin = enc(xi, lengths, outputs=outputs)
        assert (out is None) == (not outputs)
        fin.square().sum().backward()
        runs.append([fin, xi.grad, *(p.grad for p in enc.parameters())])
    for full, lean in zip(*runs, strict=True):
        assert torch.equal(full, lean)


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("how", ["mean", "max"])
def test_pool_equals_masking_every_step(how, ties):
    """pool reduces the steps every row has as they are and masks only the tail: the same values and
    gradients as masking all T steps (float64, so that only the order of the sums could differ). With
    ties (outputs of 0, 1 and 2 only), max shares each gradient among the real steps holding the
    maximum, head and tail alike, as amax over all of them does."""
    torch.manual_seed(0)
    for lengths in ([5, 3, 1], [4, 4, 4], [1], [6, 6, 2]):
        lens = torch.tensor(lengths)
        shape = (len(lengths), max(lengths), 7)
        values = torch.randint(0, 3, shape).double() if ties else torch.randn(shape, dtype=torch.float64)
        outputs = values.requires_grad_()
        mask = (torch.arange(max(lengths))[None, :] < lens[:, None])[:, :, None]
        if how == "mean":
            expected = (outputs * mask).sum(1) / lens[:, None]
        else:
            expected = outputs.masked_fill(~mask, float("-inf")).amax(1)
        got = pool(outputs, outputs[:, 0], lens, how)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        weights = torch.randn_like(got)
        (g_got,) = torch.autograd.grad((got * weights).sum(), outputs)
        (g_exp,) = torch.autograd.grad((expected * weights).sum(), outputs)
        torch.testing.assert_close(g_got, g_exp, rtol=1e-12, atol=1e-12)


def test_max_pool_gradient_comes_back_in_the_outputs_layout():
    """The scratch encoder's outputs are a batch-first view of time-major steps: the max pool's gradient
    comes back laid out the same way (no transposing copy), and equals amax's."""
    lens = torch.tensor([6, 5, 3])
    steps = torch.randn(6, 3, 4)  # (T, B, F), as the encoder writes them
    outputs = steps.transpose(0, 1).requires_grad_()  # (B, T, F) view
    mask = (torch.arange(6)[None, :] < lens[:, None])[:, :, None]
    weights = torch.randn(3, 4)
    (got,) = torch.autograd.grad((pool(outputs, outputs[:, 0], lens, "max") * weights).sum(), outputs)
    (expected,) = torch.autograd.grad((outputs.masked_fill(~mask, float("-inf")).amax(1) * weights).sum(),
                                      outputs)
    assert got.stride() == outputs.stride()
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert int((got != 0).sum()) == 3 * 4  # one step per (row, feature): no ties in random floats


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown cell 'transformer'; valid: lstm, gru, rnn"):
        ModelSpec(vocab_size=10, num_classes=2, cell="transformer")
    with pytest.raises(ValueError, match="valid: builtin, scratch"):
        ModelSpec(vocab_size=10, num_classes=2, impl="cudnn")
    with pytest.raises(ValueError, match="last, mean, max"):
        ModelSpec(vocab_size=10, num_classes=2, pooling="attention")


@pytest.mark.parametrize("impl,pack", [("builtin", "never"), ("builtin", "always"), ("scratch", "never")])
def test_recurrent_dropout_drops_weight_hh_entries_only_while_training(impl, pack):
    """AWD-LSTM's weight drop: in training, each direction runs with one dropped-out copy of weight_hh
    (drawn forward first, then reverse); in eval mode the weights are used whole."""
    p = 0.4
    torch.manual_seed(0)
    enc = build_encoder(ModelSpec(vocab_size=2, num_classes=2, impl=impl, embedding_dim=6, hidden_size=5,
                                  bidirectional=True, pack=pack, recurrent_dropout=p))
    ref = torch.nn.LSTM(6, 5, batch_first=True, bidirectional=True)
    ref.load_state_dict({k.removeprefix("rnn."): v for k, v in enc.state_dict().items()})
    lengths = torch.tensor([7, 1, 4, 7, 2])
    x = torch.randn(5, 7, 6)
    mask = real_mask(lengths, 7)
    with torch.no_grad():
        exact = reference(copy.deepcopy(ref).double(), x.double(), lengths)[0]
        assert_float32_close(enc.eval()(x, lengths)[0] * mask, reference(ref, x, lengths)[0], exact, "eval")
        torch.manual_seed(3)
        dropped = {n: torch.nn.functional.dropout(getattr(ref, n), p, training=True)
                   for n in ("weight_hh_l0", "weight_hh_l0_reverse")}
        for n, w in dropped.items():
            assert 0 < int((w == 0).sum()) < w.numel()
            getattr(ref, n).copy_(w)
    exact_ref = copy.deepcopy(ref).double()
    expected, exact = reference(ref, x, lengths)[0], reference(exact_ref, x.double(), lengths)[0]
    expected.square().sum().backward()
    exact.square().sum().backward()
    torch.manual_seed(3)
    out = enc.train()(x, lengths)[0] * mask
    assert_float32_close(out, expected, exact, "train")
    out.square().sum().backward()
    for n, w in dropped.items():
        kept = w != 0  # d loss / d weight = mask / (1 - p) * d loss / d dropped weight
        grad = dict(enc.named_parameters())[f"rnn.{n}"].grad
        assert torch.equal(grad[~kept], torch.zeros_like(grad[~kept]))
        assert_float32_close(grad[kept], getattr(ref, n).grad[kept] / (1 - p),
                             getattr(exact_ref, n).grad[kept] / (1 - p), f"{n}.grad")


@needs_native_bf16
def test_bf16_precision_runs_the_encoder_in_bfloat16_and_returns_float32_logits():
    torch.manual_seed(0)
    kw = dict(vocab_size=40, num_classes=3, embedding_dim=8, hidden_size=6, bidirectional=True, pooling="max")
    full = TextClassifier(ModelSpec(**kw))
    half = TextClassifier(ModelSpec(**kw, precision="bf16"))
    half.load_state_dict(full.state_dict())
    seen = []
    half.encoder.register_forward_hook(lambda module, args, out: seen.append(out[0].dtype))
    ids = torch.tensor([[3, 4, 5, 6, 7], [8, 9, 2, 0, 0]])
    lengths = torch.tensor([5, 3])
    logits = half(ids, lengths)
    assert seen == [torch.bfloat16] and logits.dtype == torch.float32
    # bfloat16 keeps 8 significant bits; 5 steps x (8 + 6) products reach each logit
    tol = float32_tolerance(5 * 14, logits.abs().max().item(), torch.bfloat16)
    torch.testing.assert_close(logits, full(ids, lengths), atol=tol, rtol=0)
    logits.sum().backward()
    assert all(p.grad.dtype == torch.float32 for p in half.parameters() if p.grad is not None)
    assert half.encoder.rnn.weight_hh_l0.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs impl 'builtin'"):
        ModelSpec(vocab_size=40, num_classes=3, impl="scratch", precision="bf16")
    with pytest.raises(ValueError, match="fp32, bf16"):
        ModelSpec(vocab_size=40, num_classes=3, precision="fp16")


def test_ngram_ids_are_the_words_then_hashed_neighbour_pairs_within_each_length():
    from lstmcli.models.ngrams import HASH_MULTIPLIER, ngram_ids
    ids = torch.tensor([[5, 6, 7], [8, 0, 0], [9, 4, 0]])
    rows = ngram_ids(ids, torch.tensor([3, 1, 2]), vocab_size=10, buckets=1000)

    def bucket(a, b):
        return 10 + (a * HASH_MULTIPLIER + b) % 1000
    assert rows.tolist() == [[5, 6, 7, bucket(5, 6), bucket(6, 7)],
                             [8, 0, 0, 0, 0],  # one word: no pair; 0 is <pad>, left out of the mean
                             [9, 4, 0, bucket(9, 4), 0]]
    assert ngram_ids(ids[:, :1], torch.tensor([1, 1, 1]), 10, 1000).tolist() == [[5], [8], [9]]


def test_ngram_bag_is_the_mean_over_real_words_and_pairs_and_ignores_padding():
    from lstmcli.models.ngrams import FastTextBag, ngram_ids
    torch.manual_seed(0)
    bag = FastTextBag(vocab_size=10, buckets=50, dim=3)
    short = torch.tensor([[3, 4]])
    padded = torch.tensor([[3, 4, 0, 0]])
    rows = ngram_ids(short, torch.tensor([2]), 10, 50)[0]  # 3, 4 and the pair (3, 4)
    expected = bag.table.weight[rows].mean(0)
    assert torch.allclose(bag(short, torch.tensor([2]))[0], expected)
    assert torch.equal(bag(padded, torch.tensor([2])), bag(short, torch.tensor([2])))


def test_a_classifier_with_an_ngram_bag_reads_it_beside_the_encoder():
    torch.manual_seed(0)
    spec = ModelSpec(vocab_size=30, num_classes=3, hidden_size=4, bidirectional=True, pooling="max",
                     ngram_buckets=64, ngram_dim=5, dropout=0.5)
    model = TextClassifier(spec).eval()
    assert (model.head.in_features, model.ngram_head.in_features) == (2 * 4, 5)
    assert model.ngrams.table.weight.shape == (30 + 64, 5)
    ids, lengths = torch.tensor([[3, 4, 5], [6, 7, 0]]), torch.tensor([3, 2])
    parts = model(ids, lengths, parts=True)
    assert parts.shape == (2, 2, 3)  # (branches, batch, classes)
    assert torch.equal(parts.sum(0), model(ids, lengths))
    model.train()  # dropout acts on the encoder's features, never on the bag's
    parts = model(ids, lengths, parts=True)
    assert torch.equal(parts[1], model.ngram_head(model.ngrams(ids, lengths)))
    parts[1].sum().backward()
    assert model.ngrams.table.weight.grad[[3, 4, 5, 6, 7]].abs().sum() > 0  # the bag learns
    assert model.ngrams.table.weight.grad[0].abs().sum() == 0  # <pad> never does
    assert TextClassifier(ModelSpec(vocab_size=30, num_classes=3)).ngrams is None


def test_each_branch_learns_from_its_own_loss():
    """A training step gives the encoder the gradient of its own logits' loss and the bag that of its
    own: the bag, quick to fit, cannot take the encoder's gradient away (as one loss on the sum would)."""
    torch.manual_seed(0)
    model = TextClassifier(ModelSpec(vocab_size=30, num_classes=2, hidden_size=4, ngram_buckets=64,
                                     ngram_dim=3))
    split = EncodedSplit(torch.randint(2, 30, (12,), dtype=torch.int32), torch.tensor([0, 5, 7, 12]),
                         torch.tensor([1, 0, 1]))
    rows = torch.tensor([2, 0, 1])
    loss, totals = _step_loss(model, split, rows, Truncation(), torch.device("cpu"), SINGLE)
    loss.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters()}
    batch = collate(split, rows)
    for branch in (0, 1):
        model.zero_grad()
        part = model(batch.ids, batch.lengths, parts=True)[branch]
        torch.nn.functional.cross_entropy(part, batch.labels).backward()
        for name, p in model.named_parameters():
            if p.grad is not None and p.grad.abs().sum() > 0:
                assert torch.allclose(got[name], p.grad, atol=1e-7), name
    logits = model(batch.ids, batch.lengths)
    reported = torch.nn.functional.cross_entropy(logits, batch.labels, reduction="sum")
    assert totals[0].item() == pytest.approx(reported.item())  # the loss of the logits, as evaluation's


def test_distinct_ngram_ids_keep_each_ngram_of_a_text_once():
    from lstmcli.models.ngrams import distinct_ngram_ids, ngram_ids
    ids = torch.tensor([[3, 4, 3, 4, 0], [5, 5, 5, 0, 0]])  # 0-padded
    lengths = torch.tensor([4, 3])
    got = distinct_ngram_ids(ids, lengths, vocab_size=10, buckets=1000)
    rows = ngram_ids(ids, lengths, 10, 1000)
    for g, r in zip(got.tolist(), rows.tolist(), strict=True):
        assert sorted(x for x in g if x) == sorted(set(r) - {0})  # every n-gram, each once
    # 3 4 3 4: words 3, 4; pairs (3,4) twice and (4,3) once -> 4 distinct; 5 5 5: 5 and (5,5) -> 2
    assert [sum(x != 0 for x in g) for g in got.tolist()] == [4, 2]


def nb_bag_by_hand(counts, w, bias, grams, label=None):
    """NBSVM's logits in float64 from the formula: p = n_c + 1, q = n_rest + 1 over the whole table."""
    from lstmcli.models.ngrams import NbsvmBag
    counts = counts.double()
    rest = counts.sum(1, keepdim=True) - counts
    norm_p, norm_q = (counts + 1).sum(0), (rest + 1).sum(0)
    total = bias.double().clone()
    for g in grams:
        n = counts[g].clone()
        if label is not None:
            n[label] -= 1
        r = ((n + 1) / norm_p).log() - ((n.sum() - n + 1) / norm_q).log()
        total += (NbsvmBag.GAIN * w[g, 0].double() + NbsvmBag.W_ADJ) * r * NbsvmBag.R_SCALE
    return total


def test_nbsvm_bag_sums_each_distinct_ngrams_ratio_times_its_weight():
    from lstmcli.models.ngrams import HASH_MULTIPLIER, NbsvmBag
    torch.manual_seed(0)
    bag = NbsvmBag(vocab_size=10, buckets=7, num_classes=3)
    counts = torch.randint(0, 6, (17, 3)).float()
    counts[[3, 4]] += 1  # every text below holds 3 and 4, so the counts it is left out of are >= 1
    bag.set_counts(counts)
    assert bag.counts[0].abs().sum() == 0  # <pad> counts for nothing, whatever it was given
    with torch.no_grad():
        bag.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    counts[0] = 0
    ids, lengths = torch.tensor([[3, 4, 3, 4], [4, 3, 0, 0]]), torch.tensor([4, 2])
    pair = lambda a, b: 10 + (a * HASH_MULTIPLIER + b) % 7  # noqa: E731
    grams = [[3, 4, pair(3, 4), pair(4, 3)], [4, 3, pair(4, 3)]]
    got = bag(ids, lengths)
    w = bag.weight.weight.detach()
    for row, g in enumerate(grams):
        want = nb_bag_by_hand(counts, w, bag.bias.detach(), sorted(set(g)))
        assert torch.allclose(got[row].double(), want, atol=1e-5), (row, got[row], want)
    # given the labels (training), each text is left out of its own counts
    labels = torch.tensor([2, 0])
    got = bag(ids, lengths, labels)
    for row, g in enumerate(grams):
        want = nb_bag_by_hand(counts, w, bag.bias.detach(), sorted(set(g)), int(labels[row]))
        assert torch.allclose(got[row].double(), want, atol=1e-5), (row, got[row], want)
    # table() is what each n-gram adds: the logits are the bias plus its distinct rows' sum
    table = bag.table().detach()
    assert table[0].abs().sum() == 0
    assert torch.allclose(bag(ids, lengths)[0], bag.bias + table[sorted(set(grams[0]))].sum(0), atol=1e-6)
    # padding changes nothing; the weights learn, <pad>'s never
    assert torch.equal(bag(ids[1:, :2], lengths[1:]), bag(ids[1:], lengths[1:]))
    bag(ids, lengths, labels).sum().backward()
    assert bag.weight.weight.grad[[3, 4]].abs().sum() > 0 and bag.weight.weight.grad[0].abs().sum() == 0
    with pytest.raises(ValueError, match="shape"):
        bag.set_counts(torch.zeros(16, 3))


def test_a_classifier_with_an_nbsvm_bag_passes_training_labels_to_it_only():
    torch.manual_seed(0)
    spec = ModelSpec(vocab_size=30, num_classes=2, hidden_size=4, ngram_buckets=64, ngram_bag="nbsvm")
    model = TextClassifier(spec).eval()
    assert model.ngram_head is None and model.ngrams.counts.shape == (30 + 64, 2)
    model.ngrams.set_counts(torch.randint(1, 5, (94, 2)).float())
    ids, lengths, labels = torch.tensor([[3, 4, 5], [6, 7, 0]]), torch.tensor([3, 2]), torch.tensor([1, 0])
    parts = model(ids, lengths, parts=True)
    assert torch.equal(parts[1], model.ngrams(ids, lengths))
    trained = model(ids, lengths, parts=True, labels=labels)
    assert torch.equal(trained[1], model.ngrams(ids, lengths, labels))
    assert not torch.equal(trained[1], parts[1]) and torch.equal(trained[0], parts[0])
    with pytest.raises(ValueError, match="ngram_bag"):
        ModelSpec(vocab_size=30, num_classes=2, ngram_bag="tfidf")
