"""Adversarial (AT) and virtual adversarial (VAT) training on the embedded text (Miyato, Dai &
Goodfellow 2017, "Adversarial Training Methods for Semi-Supervised Text Classification").

Miyato et al. perturb *normalised* embeddings (each dimension zero-mean, unit-variance over the
vocabulary), so that the model cannot make a fixed-norm perturbation negligible by growing its
embeddings. lstmcli does not normalise the model's embeddings; it scales the perturbation instead:
per text, r = epsilon x rms(the batch's embedded tokens, detached) x g / ||g||_2, with g the gradient
with respect to that text's embedded sequence (T, E) and the norm over the whole text. With embeddings
of unit variance this is Miyato's r; otherwise epsilon keeps the same meaning relative to the size of
the embeddings whatever that size has grown to.

The perturbation is added to the recurrent encoder's input only (TextClassifier.forward's `noise`): an
n-gram bag reads token ids. The gradient g comes from the unwrapped model by torch.autograd.grad with
respect to a zero noise tensor, so no parameter gradient accumulates and DDP sees nothing of it; the
trained forward is then one forward of the (wrapped) model over the doubled batch [x; x] with noise
[0; r], so that DDP sees one forward per backward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lstmcli.models.loss import classification_loss

# VAT's finite-difference step xi, per text and relative to the embeddings' RMS like epsilon: 0.1, the
# default of Miyato et al.'s released text code (small_constant_for_finite_diff). The 1e-6 of the image
# VAT paper is too small for float32 logits here: p(x + xi d) rounds to p(x) and g comes back exactly 0.
VAT_XI = 0.1
_TINY = 1e-12


def token_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(B,) lengths -> (B, T, 1) float 1 at real tokens, 0 at padding."""
    return (torch.arange(T, device=lengths.device)[None, :] < lengths[:, None]).float()[..., None]


def embedding_rms(model, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """The root mean square of the embedded tokens of the batch (padding left out), detached: a scalar."""
    with torch.no_grad():
        emb = model.embedding(ids).float()
        mask = token_mask(lengths, ids.shape[1])
        count = mask.sum() * emb.shape[-1]
        return ((emb.square() * mask).sum() / count.clamp_min(1)).sqrt()


def per_text_unit(g: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, E) -> each text's g / ||g||_2 (norm over the whole text; padding zeroed)."""
    g = g.float() * mask
    norm = g.flatten(1).norm(dim=1).clamp_min(_TINY)
    return g / norm[:, None, None]


def kl_divergence(p_logits: torch.Tensor, q_logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """(B, C), (B, C) -> (B,) KL(p || q): the softmax's for single-label models, the sum of the per-label
    Bernoulli KLs for multi-label ones (a sigmoid per label)."""
    p_logits, q_logits = p_logits.float(), q_logits.float()
    if not multi_label:
        log_p, log_q = F.log_softmax(p_logits, -1), F.log_softmax(q_logits, -1)
        return (log_p.exp() * (log_p - log_q)).sum(-1)
    p = torch.sigmoid(p_logits)
    log_p, log_1p = F.logsigmoid(p_logits), F.logsigmoid(-p_logits)
    log_q, log_1q = F.logsigmoid(q_logits), F.logsigmoid(-q_logits)
    return (p * (log_p - log_q) + (1 - p) * (log_1p - log_1q)).sum(-1)


def perturbation(model, mode: str, epsilon: float, ids: torch.Tensor, lengths: torch.Tensor,
                 labels: torch.Tensor, weight: torch.Tensor | None = None,
                 clean_logits: torch.Tensor | None = None) -> torch.Tensor:
    """r (B, T, E), detached, for `model` (the unwrapped TextClassifier, in training mode): AT's
    adversarial perturbation of the encoder branch's loss, or VAT's (mode "vat", `clean_logits` (B, C)
    the encoder branch's logits of the clean batch, detached) of KL(p(x) || p(x + r))."""
    B, T = ids.shape
    E = model.embedding.embedding_dim
    mask = token_mask(lengths, T)
    scale = epsilon * embedding_rms(model, ids, lengths)
    if mode == "at":
        noise = torch.zeros(B, T, E, device=ids.device, requires_grad=True)
        part = model(ids, lengths, parts=True, labels=labels, noise=noise)[0]
        objective = classification_loss(part, labels, weight, reduction="sum")
    else:
        multi_label = labels.dim() == 2
        d = per_text_unit(torch.randn(B, T, E, device=ids.device), mask)
        noise = (VAT_XI * embedding_rms(model, ids, lengths) * d).requires_grad_(True)
        part = model(ids, lengths, parts=True, labels=labels, noise=noise)[0]
        objective = kl_divergence(clean_logits.detach(), part, multi_label).sum()
    (g,) = torch.autograd.grad(objective, noise)
    return (scale * per_text_unit(g, mask)).detach()
