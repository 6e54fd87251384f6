"""Knowledge distillation: the loss a student minimises to reproduce its teacher.

One definition, used by retrofit training (``Trainer.step``, the teacher being the
adopted network itself) and by the pruning pipeline's fine-tune (``prune.heal``, the
teacher being the unpruned network).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def distillation_loss(logits: Tensor, teacher_logits: Tensor | None, labels: Tensor, alpha: float,
                      temperature: float = 1.0, label_smoothing: float = 0.0,
                      reduction: str = "mean") -> Tensor:
    """``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * cross-entropy`` (Hinton et al.).

    ``alpha`` 0 is plain cross-entropy (``teacher_logits`` may then be None). ``reduction`` is
    "mean" (a scalar) or "none" (one loss per sample: row-mode learned survival regresses
    per-sample losses). The T^2 factor keeps the gradient's size independent of T.
    """
    ce = F.cross_entropy(logits, labels, label_smoothing=label_smoothing, reduction="none")
    if alpha > 0:
        log_p = F.log_softmax(logits / temperature, dim=1)
        log_q = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
        kd = (log_q.exp() * (log_q - log_p)).sum(dim=1) * temperature ** 2
        ce = alpha * kd + (1 - alpha) * ce
    return ce.mean() if reduction == "mean" else ce
