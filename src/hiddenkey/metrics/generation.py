"""Corpus-level NLG metrics for E2E NLG and WebNLG, following the LoRA NLG setup (Hu et al.).

The LoRA repository scores E2E with the official ``e2e-metrics`` script
(github.com/tuetschek/e2e-metrics) and WebNLG with the WebNLG 2020 challenge script
``GenerationEval/eval.py``. This module re-implements both without Java or Perl:

E2E (``e2e_metrics``)
    * BLEU and NIST as computed by ``mteval-v13a`` (and e2e-metrics' ``pymteval.py``): the
      13a tokenisation, case-insensitive, all references used. BLEU is corpus BLEU-4 with the
      closest reference length (ties: the shorter one) and no smoothing; NIST is NIST-5 with
      information weights estimated from all references of the evaluated corpus, clipping
      against the per-n-gram maximum over references, and the NIST length penalty on the
      average reference length.
    * METEOR, ROUGE-L and CIDEr as computed by coco-caption (``pycocoevalcap``), which
      e2e-metrics wraps: texts are PTB-tokenised, lower-cased and stripped of punctuation
      tokens first. ROUGE-L is coco-caption's multi-reference variant and CIDEr is
      coco-caption's CIDEr-D, both implemented here by hand.

WebNLG (``webnlg_metrics``)
    * BLEU as ``multi-bleu-detok.perl`` computes it: raw text, 13a tokenisation,
      case-sensitive.
    * METEOR and TER on NLTK word-tokenised text; TER is the mean over hypotheses of the
      best (lowest) sentence TER against each reference, as ``GenerationEval`` computes it.

METEOR is NLTK's re-implementation (exact, Porter-stem and, if the corpus is installed,
WordNet-synonym matching, with NLTK's default parameters), not the METEOR 1.5 jar with
its paraphrase tables used by the official scripts; the official numbers are somewhat
higher. ``meteor_uses_wordnet()`` tells whether synonym matching was available.

Blank reference strings (as produced by files padded to a fixed number of references) are
dropped before scoring; every hypothesis must keep at least one reference.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from nltk.stem.porter import PorterStemmer
from nltk.tokenize import NLTKWordTokenizer
from nltk.translate import meteor_score as nltk_meteor
from sacrebleu.metrics import BLEU, TER
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

Ngram = tuple[str, ...]

_COCO_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", "(", ")", "{", "}",
     ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
_SENTENCE_BOUNDARY = re.compile(r"(?<=[.!?])\s+")
_CURRENCY = re.compile(r"([£$€¥])")
_NIST_BETA = -math.log(0.5) / math.log(1.5) ** 2

_word_tokenizer = NLTKWordTokenizer()
_mteval_tokenizer = Tokenizer13a()
_porter = PorterStemmer()


def _validate(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> list[list[str]]:
    """Check the corpus shape and return the references without blank strings."""
    if isinstance(hypotheses, str) or isinstance(references, str):
        raise ValueError("hypotheses and references must be sequences, not a single string")
    if len(hypotheses) == 0:
        raise ValueError("cannot score an empty corpus")
    if len(hypotheses) != len(references):
        raise ValueError(
            f"got {len(hypotheses)} hypotheses but {len(references)} reference lists"
        )
    cleaned: list[list[str]] = []
    for index, (hypothesis, refs) in enumerate(zip(hypotheses, references)):
        if not isinstance(hypothesis, str):
            raise ValueError(f"hypothesis {index} is not a string: {hypothesis!r}")
        if isinstance(refs, str):
            raise ValueError(
                f"references[{index}] is a string; each item must be a list of reference strings"
            )
        kept = [ref for ref in refs if ref is not None and ref.strip()]
        if not kept:
            raise ValueError(f"hypothesis {index} has no (non-blank) reference")
        cleaned.append(kept)
    return cleaned


def _sentences(text: str) -> list[str]:
    return [part for part in _SENTENCE_BOUNDARY.split(text.strip()) if part]


def word_tokenize(text: str) -> str:
    """NLTK word tokenisation (Treebank rules), as ``nltk.word_tokenize`` but data-free.

    ``nltk.word_tokenize`` first splits sentences with Punkt, whose model cannot be
    downloaded here; sentences are split on ``[.!?]`` followed by whitespace instead.
    Returns the tokens joined by single spaces.
    """
    return " ".join(tok for sent in _sentences(text) for tok in _word_tokenizer.tokenize(sent))


def coco_tokenize(text: str) -> str:
    """Approximate coco-caption's PTBTokenizer: lower-cased, PTB tokens, punctuation removed.

    coco-caption runs Stanford CoreNLP's PTBTokenizer with ``-lowerCase`` and then drops the
    punctuation tokens listed in ``pycocoevalcap/tokenizer/ptbtokenizer.py``. NLTK's
    Treebank tokenizer stands in for the Java one; currency symbols are split off as
    Stanford's tokenizer does.
    """
    text = _CURRENCY.sub(r" \1 ", text.lower())
    tokens = word_tokenize(text).split()
    return " ".join(tok for tok in tokens if tok not in _COCO_PUNCTUATION)


def _mteval_tokens(text: str, lowercase: bool) -> list[str]:
    if lowercase:
        text = text.lower()
    return _mteval_tokenizer(text.strip()).split()


def _ngrams(tokens: Sequence[str], n: int) -> Counter[Ngram]:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu_score(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    lowercase: bool = True,
    tokenize: str = "13a",
) -> float:
    """Corpus BLEU-4 on a 0..100 scale, with a variable number of references per hypothesis.

    sacrebleu with ``smooth_method="none"`` reproduces ``mteval-v13a`` / ``multi-bleu-detok``:
    clipped counts against the per-n-gram maximum over references and the closest reference
    length (ties: shorter). Missing references are padded with ``None``, which sacrebleu
    ignores. ``lowercase=True`` matches mteval's default (E2E); WebNLG's multi-bleu-detok
    is case-sensitive.
    """
    refs = _validate(hypotheses, references)
    width = max(len(r) for r in refs)
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]
    metric = BLEU(lowercase=lowercase, tokenize=tokenize, smooth_method="none", force=True)
    return float(metric.corpus_score(list(hypotheses), streams).score)


def nist_score(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    lowercase: bool = True,
    max_order: int = 5,
) -> float:
    """Corpus NIST as computed by ``mteval-v13a.pl`` and e2e-metrics' ``pymteval.py``.

    Info(w1..wn) = log2(count(w1..wn-1) / count(w1..wn)) with counts over all references of
    the corpus (count of the empty prefix = number of reference words). Hypothesis n-grams
    are clipped by their maximum count in any one reference. The length penalty
    exp(-beta * ln(min(1, L_sys / L_ref))^2), beta chosen so that a 2/3 length ratio gives
    0.5, uses the summed per-segment average reference length. Raw scale (E2E: about 8-9).

    NLTK's ``corpus_nist`` scores each segment against its single best reference instead,
    which differs with multiple references.
    """
    refs = _validate(hypotheses, references)
    hyp_tokens = [_mteval_tokens(h, lowercase) for h in hypotheses]
    ref_tokens = [[_mteval_tokens(r, lowercase) for r in rs] for rs in refs]

    ref_counts: Counter[Ngram] = Counter()
    for segment_refs in ref_tokens:
        for ref in segment_refs:
            ref_counts[()] += len(ref)
            for n in range(1, max_order + 1):
                ref_counts.update(_ngrams(ref, n))

    info_sums = [0.0] * max_order
    hyp_totals = [0] * max_order
    sys_len, ref_len = 0, 0.0
    for hyp, segment_refs in zip(hyp_tokens, ref_tokens):
        sys_len += len(hyp)
        ref_len += sum(len(r) for r in segment_refs) / len(segment_refs)
        for n in range(1, max_order + 1):
            hyp_ngrams = _ngrams(hyp, n)
            hyp_totals[n - 1] += sum(hyp_ngrams.values())
            max_ref: Counter[Ngram] = Counter()
            for ref in segment_refs:
                max_ref |= _ngrams(ref, n)
            for ngram, count in hyp_ngrams.items():
                hits = min(count, max_ref[ngram])
                if hits:
                    info_sums[n - 1] += hits * math.log2(ref_counts[ngram[:-1]] / ref_counts[ngram])

    score = sum(info / max(total, 1) for info, total in zip(info_sums, hyp_totals))
    return score * _nist_length_penalty(sys_len, ref_len)


def _nist_length_penalty(sys_len: int, ref_len: float) -> float:
    ratio = sys_len / ref_len if ref_len else 0.0
    if ratio >= 1:
        return 1.0
    if ratio <= 0:
        return 0.0
    return math.exp(-_NIST_BETA * math.log(ratio) ** 2)


class _NoSynonyms:
    """WordNet stand-in for NLTK's METEOR: no synsets, so only exact and stem matches count."""

    def synsets(self, *args: Any, **kwargs: Any) -> list[Any]:
        return []


@functools.cache
def _wordnet() -> Any:
    try:
        from nltk.corpus import wordnet

        wordnet.synsets("test")
        return wordnet
    except (LookupError, OSError):
        return _NoSynonyms()


def meteor_uses_wordnet() -> bool:
    """True when NLTK's WordNet corpus is installed and METEOR matches synonyms too."""
    return not isinstance(_wordnet(), _NoSynonyms)


def meteor_score(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus METEOR on a 0..1 scale: the mean of NLTK sentence METEOR scores.

    Inputs are whitespace-tokenised (tokenise first); matching is case-insensitive. Each
    sentence takes its best score over its references. Uses exact, Porter-stem and (when
    available, see ``meteor_uses_wordnet``) WordNet-synonym matches with NLTK's parameters
    (alpha=0.9, beta=3, gamma=0.5). The official scripts run the METEOR 1.5 jar (other
    parameters, paraphrase matching, statistics pooled over the corpus), which gives
    somewhat higher values.
    """
    refs = _validate(hypotheses, references)
    wordnet = _wordnet()
    scores = [
        nltk_meteor.meteor_score(
            [r.split() for r in rs], h.split(), stemmer=_porter, wordnet=wordnet
        )
        for h, rs in zip(hypotheses, refs)
    ]
    return float(np.mean(scores))


def _lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for token in a:
        current = [0]
        for j, other in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if token == other else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l_score(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    beta: float = 1.2,
) -> float:
    """Corpus ROUGE-L on a 0..1 scale, coco-caption's variant (``pycocoevalcap/rouge``).

    Per hypothesis: P = max_r LCS/|hyp| and R = max_r LCS/|ref| (maxima taken separately
    over references), F = (1 + beta^2) P R / (R + beta^2 P) with beta = 1.2; the corpus score
    is the mean F. Inputs are whitespace-tokenised.
    """
    refs = _validate(hypotheses, references)
    scores = []
    for hypothesis, segment_refs in zip(hypotheses, refs):
        hyp = hypothesis.split()
        lcs = [(_lcs_length(hyp, ref.split()), len(ref.split())) for ref in segment_refs]
        precision = max(common / len(hyp) for common, _ in lcs) if hyp else 0.0
        recall = max(common / length for common, length in lcs)
        if precision == 0 or recall == 0:
            scores.append(0.0)
        else:
            scores.append((1 + beta**2) * precision * recall / (recall + beta**2 * precision))
    return float(np.mean(scores))


def _tfidf(
    counts: Counter[Ngram], doc_freq: Counter[Ngram], log_num_docs: float, max_order: int
) -> tuple[list[dict[Ngram, float]], list[float], int]:
    """coco-caption's ``counts2vec``: tf * (log N - log max(1, df)), per-order norms, length."""
    vec: list[dict[Ngram, float]] = [{} for _ in range(max_order)]
    norms = [0.0] * max_order
    for ngram, tf in counts.items():
        weight = tf * (log_num_docs - math.log(max(1.0, doc_freq[ngram])))
        vec[len(ngram) - 1][ngram] = weight
        norms[len(ngram) - 1] += weight**2
    length = sum(tf for ngram, tf in counts.items() if len(ngram) == 2)
    return vec, [math.sqrt(x) for x in norms], length


def cider_d_score(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    max_order: int = 4,
    sigma: float = 6.0,
) -> float:
    """Corpus CIDEr-D, a faithful port of coco-caption's ``cider_scorer.py`` (raw scale).

    Document frequencies come from the references of the evaluated corpus (one document per
    hypothesis), so a corpus of a single item scores 0. For each order n <= 4 the clipped
    cosine sum_g min(h_g, r_g) r_g / (|h| |r|) of tf-idf vectors is multiplied by the
    Gaussian length penalty exp(-(l_h - l_r)^2 / (2 sigma^2)); the per-order values are
    averaged, averaged over references and multiplied by 10. As in coco-caption, lengths
    are counted in bigrams. Inputs are whitespace-tokenised.
    """
    refs = _validate(hypotheses, references)

    def cook(text: str) -> Counter[Ngram]:
        tokens = text.split()
        counts: Counter[Ngram] = Counter()
        for n in range(1, max_order + 1):
            counts.update(_ngrams(tokens, n))
        return counts

    hyp_counts = [cook(h) for h in hypotheses]
    ref_counts = [[cook(r) for r in rs] for rs in refs]
    doc_freq: Counter[Ngram] = Counter()
    for segment_refs in ref_counts:
        doc_freq.update(set().union(*segment_refs))
    log_num_docs = math.log(len(ref_counts))

    scores = []
    for hyp, segment_refs in zip(hyp_counts, ref_counts):
        vec_h, norm_h, len_h = _tfidf(hyp, doc_freq, log_num_docs, max_order)
        total = np.zeros(max_order)
        for ref in segment_refs:
            vec_r, norm_r, len_r = _tfidf(ref, doc_freq, log_num_docs, max_order)
            penalty = math.exp(-((len_h - len_r) ** 2) / (2 * sigma**2))
            for n in range(max_order):
                if norm_h[n] == 0 or norm_r[n] == 0:
                    continue
                dot = sum(min(w, vec_r[n].get(g, 0.0)) * vec_r[n].get(g, 0.0) for g, w in vec_h[n].items())
                total[n] += dot / (norm_h[n] * norm_r[n]) * penalty
        scores.append(10.0 * float(np.mean(total)) / len(segment_refs))
    return float(np.mean(scores))


def ter_score(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    aggregation: Literal["sentence", "corpus"] = "sentence",
    case_sensitive: bool = True,
) -> float:
    """Translation edit rate on a 0..1 scale, with sacrebleu's Tercom re-implementation.

    ``aggregation="sentence"`` follows WebNLG's ``GenerationEval``: for each hypothesis the
    lowest edits/|ref| over its references, averaged over hypotheses.
    ``aggregation="corpus"`` is Tercom's / sacrebleu's corpus TER: the sum of the fewest
    edits per hypothesis divided by the sum of average reference lengths. Inputs are
    whitespace-tokenised; no further normalisation is applied.
    """
    refs = _validate(hypotheses, references)
    metric = TER(case_sensitive=case_sensitive)
    if aggregation == "corpus":
        width = max(len(r) for r in refs)
        streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]
        return float(metric.corpus_score(list(hypotheses), streams).score) / 100.0
    if aggregation != "sentence":
        raise ValueError(f"aggregation must be 'sentence' or 'corpus', got {aggregation!r}")
    per_hypothesis = [
        min(metric.sentence_score(h, [r]).score for r in rs) / 100.0
        for h, rs in zip(hypotheses, refs)
    ]
    return float(np.mean(per_hypothesis))


def e2e_metrics(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    lowercase: bool = True,
) -> dict[str, float]:
    """The five E2E NLG challenge metrics on the scale of the paper's tables.

    Keys: ``bleu`` (0..100), ``nist`` (raw, about 8-9), ``meteor`` (0..100, i.e. 100x the
    0..1 score), ``rouge_l`` (0..100, F-measure), ``cider`` (raw, about 2-3). BLEU and NIST
    follow ``mteval-v13a`` (``lowercase`` controls its case folding, on by default as in
    mteval); METEOR, ROUGE-L and CIDEr follow coco-caption on ``coco_tokenize``d text.
    All references of each hypothesis are used.
    """
    refs = _validate(hypotheses, references)
    coco_hyps = [coco_tokenize(h) for h in hypotheses]
    coco_refs = [[coco_tokenize(r) for r in rs] for rs in refs]
    return {
        "bleu": bleu_score(hypotheses, refs, lowercase=lowercase),
        "nist": nist_score(hypotheses, refs, lowercase=lowercase),
        "meteor": 100.0 * meteor_score(coco_hyps, coco_refs),
        "rouge_l": 100.0 * rouge_l_score(coco_hyps, coco_refs),
        "cider": cider_d_score(coco_hyps, coco_refs),
    }


def webnlg_metrics(
    hypotheses: Sequence[str],
    references: Sequence[Sequence[str]],
    *,
    lowercase: bool = False,
) -> dict[str, float]:
    """WebNLG metrics as ``GenerationEval`` reports them in the paper's tables.

    Keys: ``bleu`` (0..100; raw text, 13a tokenisation, case-sensitive unless ``lowercase``),
    ``meteor`` (0..1) and ``ter`` (0..1, sentence-averaged best TER, case-sensitive), both on
    ``word_tokenize``d text.
    """
    refs = _validate(hypotheses, references)
    tok_hyps = [word_tokenize(h) for h in hypotheses]
    tok_refs = [[word_tokenize(r) for r in rs] for rs in refs]
    return {
        "bleu": bleu_score(hypotheses, refs, lowercase=lowercase),
        "meteor": meteor_score(tok_hyps, tok_refs),
        "ter": ter_score(tok_hyps, tok_refs, aggregation="sentence"),
    }
