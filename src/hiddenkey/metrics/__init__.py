"""Evaluation metrics: GLUE classification/regression and E2E/WebNLG generation."""

from hiddenkey.metrics.classification import (
    compute_classification_metrics,
    majority_class_baseline,
    primary_metric,
)
from hiddenkey.metrics.generation import (
    bleu_score,
    cider_d_score,
    coco_tokenize,
    e2e_metrics,
    meteor_score,
    meteor_uses_wordnet,
    nist_score,
    rouge_l_score,
    ter_score,
    webnlg_metrics,
    word_tokenize,
)

__all__ = [
    "bleu_score",
    "cider_d_score",
    "coco_tokenize",
    "compute_classification_metrics",
    "e2e_metrics",
    "majority_class_baseline",
    "meteor_score",
    "meteor_uses_wordnet",
    "nist_score",
    "primary_metric",
    "rouge_l_score",
    "ter_score",
    "webnlg_metrics",
    "word_tokenize",
]
