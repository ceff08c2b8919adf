"""Tests for hiddenkey.metrics; expected values are worked out by hand in the comments."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from hiddenkey.metrics import (
    bleu_score,
    cider_d_score,
    coco_tokenize,
    compute_classification_metrics,
    e2e_metrics,
    majority_class_baseline,
    meteor_score,
    meteor_uses_wordnet,
    nist_score,
    primary_metric,
    rouge_l_score,
    ter_score,
    webnlg_metrics,
    word_tokenize,
)
from hiddenkey.metrics.generation import _NoSynonyms

# ---------------------------------------------------------------- classification

# idx:     0  1  2  3  4  5
LABELS = [1, 0, 1, 1, 0, 0]
PREDS = [1, 0, 0, 1, 1, 0]
# TP = {0, 3} = 2, TN = {1, 5} = 2, FN = {2} = 1, FP = {4} = 1
# accuracy = 4/6; F1 = 2TP / (2TP + FP + FN) = 4/6
# MCC = (TP*TN - FP*FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = (4 - 1) / sqrt(3^4) = 1/3
LOGITS = np.array([[0.1, 0.9], [2.0, -1.0], [0.3, 0.2], [-1.0, 1.0], [0.0, 5.0], [1.0, 0.5]])


def test_binary_glue_metrics_by_hand() -> None:
    assert compute_classification_metrics("sst2", PREDS, LABELS) == {"accuracy": pytest.approx(2 / 3)}
    mrpc = compute_classification_metrics("mrpc", PREDS, LABELS)
    assert mrpc == {"accuracy": pytest.approx(2 / 3), "f1": pytest.approx(2 / 3)}
    cola = compute_classification_metrics("cola", PREDS, LABELS)
    assert cola == {"matthews_correlation": pytest.approx(1 / 3)}
    assert all(type(v) is float for v in mrpc.values())


def test_f1_is_for_the_positive_class() -> None:
    # labels [1, 1, 0, 0], preds [1, 0, 0, 0]: TP=1, FN=1, FP=0 -> F1 = 2/(2+0+1) = 2/3,
    # whereas the F1 of class 0 would be TP0=2, FP0=1 -> 4/5.
    result = compute_classification_metrics("qqp", [1, 0, 0, 0], [1, 1, 0, 0])
    assert result["f1"] == pytest.approx(2 / 3)
    assert result["accuracy"] == pytest.approx(3 / 4)


def test_logits_ids_and_tensors_agree() -> None:
    assert LOGITS.argmax(-1).tolist() == PREDS
    from_ids = compute_classification_metrics("cola", PREDS, LABELS)
    assert compute_classification_metrics("cola", LOGITS, LABELS) == from_ids
    assert compute_classification_metrics("cola", torch.tensor(LOGITS), torch.tensor(LABELS)) == from_ids
    column = np.array(PREDS)[:, None]
    assert compute_classification_metrics("cola", column, LABELS) == from_ids


def test_task_name_spellings() -> None:
    expected = compute_classification_metrics("sst2", PREDS, LABELS)
    assert compute_classification_metrics("SST-2", PREDS, LABELS) == expected
    assert compute_classification_metrics("mnli_mismatched", PREDS, LABELS) == expected


def test_generic_classification_macro_f1() -> None:
    labels = [0, 1, 2, 2, 1, 0]
    preds = [0, 2, 2, 2, 1, 1]
    # accuracy: idx 0, 2, 3, 4 correct -> 4/6
    # class 0: TP=1 FP=0 FN=1 -> 2/3; class 1: TP=1 FP=1 FN=1 -> 1/2; class 2: TP=2 FP=1 FN=0 -> 4/5
    # macro F1 = (2/3 + 1/2 + 4/5) / 3 = 59/90
    result = compute_classification_metrics(None, preds, labels)
    assert result == {"accuracy": pytest.approx(2 / 3), "macro_f1": pytest.approx(59 / 90)}


def test_regression_metrics_by_hand() -> None:
    preds = np.array([1.0, 2, 3, 4, 5, 6])
    labels = [1.0, 3, 2, 5, 4, 6]
    # deviations from 3.5: dx = [-2.5,-1.5,-.5,.5,1.5,2.5], dy = [-2.5,-.5,-1.5,1.5,.5,2.5]
    # sum dx*dy = 6.25+.75+.75+.75+.75+6.25 = 15.5; sum dx^2 = sum dy^2 = 17.5 -> r = 31/35.
    # No ties, so the ranks equal the values and Spearman is 31/35 as well.
    stsb = compute_classification_metrics("stsb", preds[:, None], labels)
    assert stsb == {
        "pearson": pytest.approx(31 / 35),
        "spearmanr": pytest.approx(31 / 35),
        "combined": pytest.approx(31 / 35),
    }
    # A monotone transform keeps Spearman and changes Pearson.
    warped = compute_classification_metrics("stsb", np.exp(preds), labels)
    assert warped["spearmanr"] == pytest.approx(31 / 35)
    assert warped["pearson"] != pytest.approx(31 / 35)
    # squared errors 0,1,1,1,1,0 -> mse = 4/6
    generic = compute_classification_metrics(None, preds, labels, is_regression=True)
    assert generic["mse"] == pytest.approx(2 / 3)
    assert generic["pearson"] == pytest.approx(31 / 35)


def test_primary_metric() -> None:
    assert primary_metric("cola", False) == "matthews_correlation"
    assert primary_metric("stsb", False) == "pearson"
    assert primary_metric("mrpc", False) == "accuracy"
    assert primary_metric("rte", False) == "accuracy"
    assert primary_metric(None, True) == "pearson"
    assert primary_metric(None, False) == "accuracy"
    for task in ("sst2", "mrpc", "cola", "qnli"):
        assert primary_metric(task) in compute_classification_metrics(task, PREDS, LABELS)
    assert primary_metric("stsb") in compute_classification_metrics("stsb", [0.5, 1.0, 0.0], [0.0, 1.0, 0.5])


def test_majority_class_baseline() -> None:
    # Majority training label 0 -> predictions all 0 against LABELS: 3/6 correct,
    # no predicted positives -> F1 = 0, constant predictions -> MCC = 0.
    assert majority_class_baseline([0, 0, 0, 1, 1], LABELS, "mrpc") == {"accuracy": 0.5, "f1": 0.0}
    assert majority_class_baseline([0, 0, 0, 1, 1], LABELS, "cola") == {"matthews_correlation": 0.0}
    # Tie between 0 and 1 goes to the smaller label.
    assert majority_class_baseline([1, 1, 0, 0], [0, 0, 1], "sst2") == {"accuracy": pytest.approx(2 / 3)}
    # Regression: training mean (1+2+3+6)/4 = 3; eval [1, 3, 5] -> mse = (4+0+4)/3 = 8/3.
    baseline = majority_class_baseline([1.0, 2.0, 3.0, 6.0], [1.0, 3.0, 5.0], "stsb", True)
    assert baseline["mse"] == pytest.approx(8 / 3)
    assert math.isnan(baseline["pearson"]) and math.isnan(baseline["spearmanr"])


def test_classification_input_errors() -> None:
    with pytest.raises(ValueError, match="length"):
        compute_classification_metrics("sst2", [1, 0], [1, 0, 1])
    with pytest.raises(ValueError, match="empty"):
        compute_classification_metrics("sst2", [], [])
    with pytest.raises(ValueError, match="class ids"):
        compute_classification_metrics("sst2", [0.2, 0.7], [0, 1])
    with pytest.raises(ValueError, match="length"):
        compute_classification_metrics("stsb", [0.1, 0.2, 0.3], [0.1, 0.2])
    with pytest.raises(ValueError):
        majority_class_baseline([], [0, 1], "sst2")


# ---------------------------------------------------------------- BLEU

def test_bleu_exact_match_is_100() -> None:
    assert bleu_score(["the cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(100.0)


def test_bleu_by_hand_single_reference() -> None:
    # hyp "the cat sat on the mat" vs ref "the cat sat on a mat" (both 6 tokens, BP = 1)
    # 1-grams: the (clipped to 1), cat, sat, on, mat -> 5/6
    # 2-grams: the cat, cat sat, sat on match; on the, the mat do not -> 3/5
    # 3-grams: the cat sat, cat sat on -> 2/4;  4-grams: the cat sat on -> 1/3
    # BLEU = (5/6 * 3/5 * 2/4 * 1/3) ** (1/4) = (1/12) ** (1/4)
    score = bleu_score(["the cat sat on the mat"], [["the cat sat on a mat"]])
    assert score == pytest.approx(100 * (1 / 12) ** 0.25)


def test_bleu_multi_reference_clipping_and_variable_counts() -> None:
    # With the extra reference "a cat sat on the mat", every hypothesis 2/3/4-gram is in
    # some reference; "the" still clips to 1 (max count in any single reference):
    # p = 5/6, 5/5, 4/4, 3/3 -> BLEU = (5/6) ** (1/4)
    refs = [["the cat sat on a mat", "a cat sat on the mat"]]
    assert bleu_score(["the cat sat on the mat"], refs) == pytest.approx(100 * (5 / 6) ** 0.25)
    # Second segment with one reference and an exact 4-token match:
    # p1 = (5+4)/(6+4), higher orders all matched; lengths 6+4 = 6+4 -> BP = 1.
    two = bleu_score(["the cat sat on the mat", "w x y z"], refs + [["w x y z"]])
    assert two == pytest.approx(100 * 0.9**0.25)


def test_bleu_brevity_penalty() -> None:
    # All precisions 1, hyp length 4 vs ref length 6 -> BP = exp(1 - 6/4)
    score = bleu_score(["the cat sat on"], [["the cat sat on the mat"]])
    assert score == pytest.approx(100 * math.exp(-0.5))


def test_bleu_case_folding() -> None:
    hyp, refs = ["The Cat sat on the mat"], [["the cat sat on the mat"]]
    assert bleu_score(hyp, refs, lowercase=True) == pytest.approx(100.0)
    assert bleu_score(hyp, refs, lowercase=False) < 60.0


# ---------------------------------------------------------------- NIST

def test_nist_by_hand() -> None:
    # ref "a b a c": 4 words, count(a)=2, count(b)=1, count(ab)=1
    # info(a) = log2(4/2) = 1, info(b) = log2(4/1) = 2, info(ab) = log2(count(a)/count(ab)) = 1
    # unigrams (3)/2 + bigrams 1/1 + higher orders 0 = 2.5
    # penalty: ratio 2/4, exp(-beta ln(0.5)^2) with beta = ln 2 / ln(1.5)^2
    #          = 0.5 ** ((ln 0.5 / ln 1.5) ** 2)
    penalty = 0.5 ** ((math.log(0.5) / math.log(1.5)) ** 2)
    assert nist_score(["a b"], [["a b a c"]]) == pytest.approx(2.5 * penalty)


def test_nist_penalty_half_at_two_thirds_length() -> None:
    # ref "a b c": info(a) = info(b) = log2 3, info(ab) = log2(1/1) = 0
    # unigrams 2 log2(3) / 2 = log2 3, bigram 0; ratio 2/3 -> penalty 0.5
    assert nist_score(["a b"], [["a b c"]]) == pytest.approx(0.5 * math.log2(3))


def test_nist_multi_reference_uses_all_references() -> None:
    # refs "a b" and "a c d e": 6 words; count(a)=2, count(b)=1, count(ab)=1
    # info(a) = log2 3, info(b) = log2 6, info(ab) = log2(2/1) = 1
    # unigrams (log2 3 + log2 6)/2, bigrams 1/1; average ref length 3, ratio 2/3 -> 0.5
    expected = 0.5 * (math.log2(18) / 2 + 1)
    assert nist_score(["a b"], [["a b", "a c d e"]]) == pytest.approx(expected)


def test_nist_clips_by_the_maximum_count_in_one_reference() -> None:
    # refs "a b" and "a c": 4 words, count(a) = 2 -> info(a) = 1. "a" occurs at most once
    # per reference, so only 1 of the 2 hypothesis "a"s is a hit: 1/2; bigram "a a" misses.
    # Lengths 2 vs average 2 -> no penalty.
    assert nist_score(["a a"], [["a b", "a c"]]) == pytest.approx(0.5)


def test_nist_matches_nltk_with_single_references() -> None:
    from nltk.translate.nist_score import corpus_nist

    rng = random.Random(0)
    vocab = "a b c d e the shop is near cheap".split()
    hyps = [" ".join(rng.choices(vocab, k=rng.randint(5, 12))) for _ in range(6)]
    refs = [[" ".join(rng.choices(vocab, k=rng.randint(5, 12)))] for _ in range(6)]
    expected = corpus_nist([[r[0].split()] for r in refs], [h.split() for h in hyps], n=5)
    assert nist_score(hyps, refs) == pytest.approx(expected)


# ---------------------------------------------------------------- METEOR

def test_meteor_exact_match_has_fragmentation_penalty() -> None:
    # P = R = 1, one chunk of 6 matches: penalty = 0.5 * (1/6)^3 -> 1 - 1/432
    assert meteor_score(["the cat sat on the mat"], [["the cat sat on the mat"]]) == pytest.approx(1 - 1 / 432)
    # A one-word match is a whole chunk per match: penalty 0.5
    assert meteor_score(["cat"], [["cat"]]) == pytest.approx(0.5)


def test_meteor_stem_match_counts() -> None:
    # runs/running share the Porter stem "run": 2 matches in 1 chunk, P = R = 1,
    # penalty = 0.5 * (1/2)^3 = 1/16 -> 15/16. Exact-only would give
    # P = R = 1/2, fmean = 1/2, one-match chunk penalty 1/2 -> 1/4.
    assert meteor_score(["He runs"], [["he running"]]) == pytest.approx(15 / 16)


def test_meteor_weights_recall_over_precision() -> None:
    # "the cat" vs "the cat sat": P = 1, R = 2/3, alpha = 0.9:
    # fmean = P R / (alpha P + (1 - alpha) R) = (2/3) / (29/30) = 20/29
    # one chunk of two matches -> penalty 0.5 * (1/2)^3 = 1/16 -> 15/16 * 20/29 = 75/116
    assert meteor_score(["the cat"], [["the cat sat"]]) == pytest.approx(75 / 116)


def test_meteor_unrelated_is_zero_and_best_reference_counts() -> None:
    assert meteor_score(["purple elephants"], [["quantum taxation"]]) == 0.0
    hyps = ["he runs", "purple elephants"]
    refs = [["quantum taxation", "he running"], ["quantum taxation"]]
    assert meteor_score(hyps, refs) == pytest.approx((15 / 16 + 0) / 2)


def test_meteor_wordnet_fallback() -> None:
    assert isinstance(meteor_uses_wordnet(), bool)
    assert _NoSynonyms().synsets("dog") == []


# ---------------------------------------------------------------- ROUGE-L

def test_rouge_l_by_hand() -> None:
    # LCS("a b c d e", "a c e f") = "a c e" = 3; P = 3/5, R = 3/4, beta^2 = 1.44
    # F = 2.44 * 0.6 * 0.75 / (0.75 + 1.44 * 0.6) = 1.098 / 1.614
    assert rouge_l_score(["a b c d e"], [["a c e f"]]) == pytest.approx(1.098 / 1.614)
    assert rouge_l_score(["a b c"], [["a b c"]]) == pytest.approx(1.0)
    assert rouge_l_score(["x y"], [["a b c"]]) == 0.0


def test_rouge_l_takes_precision_and_recall_maxima_separately() -> None:
    # vs "a b": LCS 2 -> P = 2/5, R = 1; vs "a c e f": P = 3/5, R = 3/4
    # coco-caption: P = 3/5, R = 1 -> F = 2.44 * 0.6 / (1 + 1.44 * 0.6) = 1.464 / 1.864
    # (the best single-reference F would be 1.098 / 1.614)
    assert rouge_l_score(["a b c d e"], [["a b", "a c e f"]]) == pytest.approx(1.464 / 1.864)


def test_rouge_l_beta_one_matches_rouge_score_package() -> None:
    from rouge_score import rouge_scorer

    hyp, ref = "the cat was found under the bed", "the cat was under the bed"
    expected = rouge_scorer.RougeScorer(["rougeL"]).score(ref, hyp)["rougeL"].fmeasure
    assert rouge_l_score([hyp], [[ref]], beta=1.0) == pytest.approx(expected)


# ---------------------------------------------------------------- CIDEr-D

def test_cider_d_by_hand() -> None:
    # Two documents, every reference n-gram has df = 1 and unseen n-grams df -> 1,
    # so every weight is tf * ln 2 and the cosines reduce to overlap counts.
    # Item 1 "a b c d" vs "a b c e": 1g 3/4, 2g 2/3, 3g 1/2, 4g 0, equal lengths
    #   -> 10 * (3/4 + 2/3 + 1/2 + 0) / 4 = 230/48
    # Item 2 exact 4-gram match -> 10
    score = cider_d_score(["a b c d", "x y z w"], [["a b c e"], ["x y z w"]])
    assert score == pytest.approx((230 / 48 + 10) / 2)


def test_cider_d_length_penalty_by_hand() -> None:
    # Item 1 "a b c" vs "a b c d e": 1g 3/sqrt(3*5), 2g 2/(sqrt 2 * 2), 3g 1/sqrt 3, 4g none,
    # lengths in bigrams 2 vs 4 -> penalty exp(-2^2 / (2 * 6^2)) = exp(-1/18)
    # Item 2 "x y" exact: 1g 1, 2g 1, 3g/4g empty -> 10 * 2/4 = 5
    item1 = 10 * math.exp(-1 / 18) * (3 / math.sqrt(15) + 1 / math.sqrt(2) + 1 / math.sqrt(3)) / 4
    score = cider_d_score(["a b c", "x y"], [["a b c d e"], ["x y"]])
    assert score == pytest.approx((item1 + 5) / 2)


def test_cider_d_clips_hypothesis_counts() -> None:
    # Item 1 "a a" vs "a b": hyp unigram weight of "a" is 2L, the reference's L, so the
    # clipped dot product is min(2L, L) * L = L^2 over norms 2L * sqrt(2) L -> 1/(2 sqrt 2)
    # (1/sqrt 2 without clipping); bigram "a a" unmatched -> 0. Item 2 "x y" exact -> 5.
    item1 = 10 * (1 / (2 * math.sqrt(2))) / 4
    score = cider_d_score(["a a", "x y"], [["a b"], ["x y"]])
    assert score == pytest.approx((item1 + 5) / 2)


def test_cider_d_idf_and_corpus_properties() -> None:
    # "the" occurs in the references of every document: idf = ln 2 - ln 2 = 0.
    assert cider_d_score(["the", "the"], [["the cat"], ["the dog"]]) == 0.0
    # One document: ln(N) = 0, every weight vanishes (coco-caption behaviour).
    assert cider_d_score(["a b c d"], [["a b c d"]]) == 0.0

    hyps = ["a b c d", "e f g h", "i j k"]
    refs = [["a b c e", "a b x d"], ["e f g h"], ["i j k l", "m n"]]
    order = [2, 0, 1]
    shuffled = cider_d_score([hyps[i] for i in order], [refs[i] for i in order])
    assert shuffled == pytest.approx(cider_d_score(hyps, refs))

    worse = cider_d_score(hyps, [["a b c d", "p q r s"], ["e f g h"], ["i j k"]])
    better = cider_d_score(hyps, [["a b c d", "a b c d"], ["e f g h"], ["i j k"]])
    assert better > worse


# ---------------------------------------------------------------- TER

def test_ter_by_hand() -> None:
    ref = [["the cat sat on the mat"]]
    assert ter_score(["the cat sat on the mat"], ref) == 0.0
    assert ter_score(["the cat sat on mat"], ref) == pytest.approx(1 / 6)  # one insertion
    assert ter_score(["the dog sat on the mat"], ref) == pytest.approx(1 / 6)  # one substitution
    assert ter_score(["sat on the mat the cat"], ref) == pytest.approx(1 / 6)  # one block shift
    assert ter_score(["The cat sat on the mat"], ref) == pytest.approx(1 / 6)  # case-sensitive


def test_ter_aggregations() -> None:
    hyps = ["the cat sat on mat", "x y"]
    refs = [["the cat sat on the mat", "a cat sat on mat"], ["x y"]]
    # item 1: 1 edit vs the 6-token ref (1/6), 1 edit vs the 5-token ref (1/5)
    # sentence: mean(min(1/6, 1/5), 0) = 1/12
    # corpus: (1 + 0) edits / (avg ref lengths 5.5 + 2) = 2/15
    assert ter_score(hyps, refs) == pytest.approx(1 / 12)
    assert ter_score(hyps, refs, aggregation="corpus") == pytest.approx(2 / 15)
    with pytest.raises(ValueError):
        ter_score(hyps, refs, aggregation="macro")  # type: ignore[arg-type]


# ---------------------------------------------------------------- tokenisers and bundles

def test_tokenisers() -> None:
    text = 'The Eagle costs £20-25. It is "cheap" (really), isn\'t it?'
    assert coco_tokenize(text) == "the eagle costs £ 20-25 it is cheap really is n't it"
    assert word_tokenize(text) == "The Eagle costs £20-25 . It is `` cheap '' ( really ) , is n't it ?"


E2E_HYPS = [
    "The Eagle is a cheap coffee shop near Burger King.",
    "Zizzi is a family friendly pub in the city centre.",
]
E2E_REFS = [
    ["The Eagle is a cheap coffee shop near Burger King.", "Near Burger King is The Eagle, a cheap coffee shop."],
    ["Zizzi is a family friendly pub in the city centre."],
]


def test_e2e_metrics_exact_match_and_scales() -> None:
    scores = e2e_metrics(E2E_HYPS, E2E_REFS)
    assert set(scores) == {"bleu", "nist", "meteor", "rouge_l", "cider"}
    assert scores["bleu"] == pytest.approx(100.0)
    assert scores["rouge_l"] == pytest.approx(100.0)
    # coco tokens: 10 and 10 words, one chunk each: 1 - 0.5 * (1/10)^3
    assert scores["meteor"] == pytest.approx(100 * (1 - 0.5 / 1000))
    assert scores["nist"] > 3.0
    # Item 2 matches its only reference exactly -> 10. Item 1 matches its first reference
    # exactly (10) and its second only partly; CIDEr averages over the two references.
    assert 5.0 < scores["cider"] < 10.0
    coco_h = [coco_tokenize(h) for h in E2E_HYPS]
    coco_r = [[coco_tokenize(r) for r in refs] for refs in E2E_REFS]
    assert scores["cider"] == pytest.approx(cider_d_score(coco_h, coco_r))


def test_e2e_coco_metrics_ignore_case_and_punctuation() -> None:
    hyps = ["the eagle is a cheap coffee shop near burger king", "zizzi is a family friendly pub in the city centre"]
    plain = e2e_metrics(hyps, E2E_REFS)
    punctuated = e2e_metrics([h.upper() + " ." for h in hyps], E2E_REFS)
    for key in ("meteor", "rouge_l", "cider"):
        assert punctuated[key] == pytest.approx(plain[key])


def test_webnlg_metrics_scales() -> None:
    hyps = ["Alan Bean was born in Wheeler, Texas.", "Aarhus Airport serves Aarhus."]
    refs = [["Alan Bean was born in Wheeler, Texas.", "Alan Bean's birthplace is Wheeler, Texas."],
            ["Aarhus Airport serves the city of Aarhus.", ""]]
    scores = webnlg_metrics(hyps, refs)
    assert set(scores) == {"bleu", "meteor", "ter"}
    # item 1 exact (TER 0); item 2: tokens "Aarhus Airport serves Aarhus ." vs
    # "Aarhus Airport serves the city of Aarhus ." -> 3 insertions / 8 -> mean 3/16
    assert scores["ter"] == pytest.approx(3 / 16)
    assert 0.5 < scores["meteor"] < 1.0
    assert 0.0 < scores["bleu"] < 100.0
    exact = webnlg_metrics(hyps[:1] * 2, refs[:1] * 2)
    assert exact["bleu"] == pytest.approx(100.0)
    assert exact["ter"] == 0.0


# ---------------------------------------------------------------- validation

@pytest.mark.parametrize(
    "hyps, refs, message",
    [
        (["a"], [["a"], ["b"]], "1 hypotheses but 2"),
        ([], [], "empty"),
        (["a"], [[]], "no \\(non-blank\\) reference"),
        (["a"], [["", "  "]], "no \\(non-blank\\) reference"),
        (["a"], ["a"], "is a string"),
        ([None], [["a"]], "not a string"),
        ("a", [["a"]], "single string"),
    ],
)
@pytest.mark.parametrize(
    "metric",
    [e2e_metrics, webnlg_metrics, bleu_score, nist_score, meteor_score, rouge_l_score, cider_d_score, ter_score],
)
def test_generation_input_validation(metric, hyps, refs, message) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        metric(hyps, refs)
