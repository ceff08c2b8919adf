"""E2E NLG Challenge and WebNLG 2017 loaders for causal-LM finetuning (Hu et al.'s LoRA NLG setup).

Each loader returns ``{split: [NLGExample, ...]}`` where every input (an E2E meaning
representation or a WebNLG triple set) appears ONCE with all its references, which is what
the evaluation needs; :func:`to_training_pairs` expands one ``(source, target)`` pair per
reference for training.

Linearisation (the text the LM is conditioned on) follows the LoRA repository's data files:

* E2E: ``name[The Eagle], eatType[coffee shop], food[French]`` becomes
  ``name : The Eagle | eatType : coffee shop | food : French`` (attribute order kept). The
  LoRA repo's pre-processed ``train.txt`` additionally renames ``eatType`` to ``Type`` and
  tokenises values (``£ 30``); we keep the official attribute names and values untouched.
  Files already in that ``source||target`` format are read as-is.
* WebNLG: triples ``subj | pred | obj`` become ``subj : pred : obj`` joined with `` | ``
  (exactly ``format_converting_webnlg.py``; no leading space, underscores kept as in the
  data). Only lexicalisations with ``comment="good"`` (or without a comment) are used, as there.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .base import DataError, TaskSpec, check_file, csv_rows, read_text

E2E_HUB_PATHS: tuple[str, ...] = ("tuetschek/e2e_nlg", "GEM/e2e_nlg")
WEBNLG_HUB_PATHS: tuple[tuple[str, str | None], ...] = (("web_nlg", "webnlg_challenge_2017"), ("GEM/web_nlg", "en"))

E2E_TASK = TaskSpec("e2e", "generation", ("source",), None, (), "e2e", E2E_HUB_PATHS[0], None)
WEBNLG_TASK = TaskSpec("webnlg", "generation", ("source",), None, (), "webnlg", *WEBNLG_HUB_PATHS[0])

#: WebNLG 2017: the 10 DBpedia categories of the training data ("seen" in the test set) ...
WEBNLG_SEEN_CATEGORIES: frozenset[str] = frozenset(
    {"Airport", "Astronaut", "Building", "City", "ComicsCharacter", "Food", "Monument", "SportsTeam", "University",
     "WrittenWork"}  # fmt: skip
)
#: ... and the 5 categories only in the test set ("unseen").
WEBNLG_UNSEEN_CATEGORIES: frozenset[str] = frozenset(
    {"Artist", "Athlete", "CelestialBody", "Company", "MeanOfTransportation", "Politician"}
)

Subset = Literal["all", "seen", "unseen"]
Triple = tuple[str, str, str]

_E2E_SPLIT_FILES: dict[str, tuple[str, ...]] = {
    "train": ("trainset.csv", "train.csv", "train.txt"),
    "validation": ("devset.csv", "dev.csv", "validation.csv", "valid.txt", "dev.txt"),
    "test": ("testset_w_refs.csv", "test.csv", "test.txt", "testset.csv"),
}
_WEBNLG_SPLIT_NAMES: dict[str, tuple[str, ...]] = {
    "train": ("train",),
    "validation": ("dev", "validation", "valid"),
    "test": ("test", "testdata_with_lex", "test_with_lex"),
}
_MR_COLUMNS = ("mr", "meaning_representation")
_REF_COLUMNS = ("ref", "human_reference", "target")
_MR_ITEM = re.compile(r"\s*([^\[\],]+?)\s*\[([^\]]*)\]\s*(?:,|$)")
_GOOD_COMMENTS = (None, "", "good")


@dataclass
class NLGExample:
    """One generation input with all its references (``meta`` holds e.g. category/seen)."""

    source: str
    references: list[str]
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# linearisation


def parse_mr(mr: str) -> list[tuple[str, str]]:
    """Parse an E2E meaning representation ``attr[value], attr[value]`` into (attr, value) pairs."""
    pairs: list[tuple[str, str]] = []
    pos, text = 0, mr.strip()
    while pos < len(text):
        match = _MR_ITEM.match(text, pos)
        if match is None or match.end() == pos:
            raise DataError(f"cannot parse E2E meaning representation {mr!r} at character {pos}")
        pairs.append((match.group(1).strip(), match.group(2).strip()))
        pos = match.end()
    if not pairs:
        raise DataError(f"empty E2E meaning representation {mr!r}")
    return pairs


def linearize_e2e(mr: str | Sequence[tuple[str, str]]) -> str:
    """``name[The Eagle], food[French]`` -> ``name : The Eagle | food : French``."""
    pairs = parse_mr(mr) if isinstance(mr, str) else mr
    return " | ".join(f"{attr} : {value}" for attr, value in pairs)


def parse_triple(text: str) -> Triple:
    """``"Aarhus | leaderName | Jacob_Bundsgaard"`` -> ``("Aarhus", "leaderName", "Jacob_Bundsgaard")``."""
    parts = [p.strip() for p in text.split(" | ")]
    if len(parts) != 3:
        parts = [p.strip() for p in text.split("|")]
    if len(parts) != 3 or not all(parts):
        raise DataError(f"cannot parse WebNLG triple {text!r}; expected 'subject | predicate | object'")
    return parts[0], parts[1], parts[2]


def linearize_triples(triples: Iterable[Triple]) -> str:
    """Triples -> ``subj : pred : obj | subj : pred : obj`` (as in Hu et al.'s LoRA repo)."""
    return " | ".join(f"{s} : {p} : {o}" for s, p, o in triples)


def to_training_pairs(examples: Iterable[NLGExample]) -> list[tuple[str, str]]:
    """One ``(source, target)`` pair per reference, in example order."""
    return [(ex.source, ref) for ex in examples for ref in ex.references]


def select_webnlg(examples: Iterable[NLGExample], subset: Subset = "all") -> list[NLGExample]:
    """Keep all, only seen-category or only unseen-category WebNLG examples."""
    if subset not in ("all", "seen", "unseen"):
        raise DataError(f"WebNLG subset must be all, seen or unseen, got {subset!r}")
    if subset == "all":
        return list(examples)
    want = subset == "seen"
    return [ex for ex in examples if bool(ex.meta.get("seen")) == want]


# --------------------------------------------------------------------------------------------
# E2E


def load_e2e(
    data_dir: str | Path | None = None,
    train_file: str | Path | None = None,
    validation_file: str | Path | None = None,
    test_file: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, list[NLGExample]]:
    """Load E2E as ``{split: [NLGExample]}``, one example per distinct MR with all its references.

    Local inputs: the official CSVs (``trainset.csv``, ``devset.csv``, ``testset_w_refs.csv``,
    columns ``mr,ref``) or the LoRA repo's ``train.txt``/``valid.txt``/``test.txt``
    (``source||target`` per line), by ``data_dir`` or per-split files. With neither, the data
    comes from the hub (``tuetschek/e2e_nlg``, else ``GEM/e2e_nlg``).
    """
    files = _resolve_split_files(data_dir, {"train": train_file, "validation": validation_file, "test": test_file},
                                 _E2E_SPLIT_FILES, "E2E")  # fmt: skip
    if files is None:
        return _load_e2e_hub(cache_dir)
    return {split: read_e2e_file(path, split) for split, path in files.items()}


def read_e2e_file(path: str | Path, split: str = "train") -> list[NLGExample]:
    """Read one E2E file (official CSV or LoRA ``source||target`` text) grouped by input."""
    p = check_file(path, f"E2E {split} file")
    pairs = _read_e2e_txt(p) if p.suffix.lower() == ".txt" else _read_e2e_csv(p, split)
    return _group(pairs, p)


def _read_e2e_csv(p: Path, split: str) -> list[tuple[str, str | None, dict[str, Any]]]:
    records = list(csv_rows(read_text(p, f"E2E {split} file"), p))
    header = [h.strip() for h in records[0][1]] if records else []
    rows = [(line, dict(zip(header, fields))) for line, fields in records[1:]]
    lower = {h.lower(): h for h in header}
    mr_col = next((lower[c] for c in _MR_COLUMNS if c in lower), None)
    ref_col = next((lower[c] for c in _REF_COLUMNS if c in lower), None)
    if mr_col is None or (ref_col is None and split != "test"):
        need = "mr" if mr_col is None else "ref"
        raise DataError(f"{p}: missing E2E column {need!r} (expected columns mr,ref); available columns: {header}")
    if not rows:
        raise DataError(f"{p}: header only, no data rows")
    out: list[tuple[str, str | None, dict[str, Any]]] = []
    for line, row in rows:
        mr = (row.get(mr_col) or "").strip()
        if not mr:
            raise DataError(f"{p}: row {line} has an empty MR")
        try:
            source = linearize_e2e(mr)
        except DataError as exc:
            raise DataError(f"{p}: row {line}: {exc}") from None
        ref = (row.get(ref_col) or "").strip() if ref_col else None
        out.append((source, ref or None, {"mr": mr}))
    return out


def _read_e2e_txt(p: Path) -> list[tuple[str, str | None, dict[str, Any]]]:
    out: list[tuple[str, str | None, dict[str, Any]]] = []
    for line_no, line in enumerate(read_text(p, "E2E file").splitlines(), start=1):
        if not line.strip():
            continue
        if "||" not in line:
            raise DataError(f"{p}:{line_no}: expected 'source || target' (LoRA E2E format), no '||' found")
        source, target = line.split("||", 1)
        out.append((source.strip(), target.strip() or None, {"mr": None}))
    return out


def _load_e2e_hub(cache_dir: str | Path | None) -> dict[str, list[NLGExample]]:
    raw = _load_from_hub([(path, None) for path in E2E_HUB_PATHS], cache_dir, "E2E")
    out: dict[str, list[NLGExample]] = {}
    for split, ds in raw.items():
        pairs: list[tuple[str, str | None, dict[str, Any]]] = []
        for row in ds:
            mr = row["meaning_representation"]
            refs = row.get("references") or [row.get("human_reference") or row.get("target")]
            source = linearize_e2e(mr)
            pairs.extend((source, ref, {"mr": mr}) for ref in refs)
        out[split] = _group(pairs, E2E_HUB_PATHS[0])
    return out


# --------------------------------------------------------------------------------------------
# WebNLG


def load_webnlg(
    data_dir: str | Path | None = None,
    train_file: str | Path | None = None,
    validation_file: str | Path | None = None,
    test_file: str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, list[NLGExample]]:
    """Load WebNLG 2017 as ``{split: [NLGExample]}`` with ``meta={"category", "seen", "eid", "triples"}``.

    Local inputs are the official XML benchmark files (a file or a folder searched recursively
    for ``*.xml``, e.g. ``train/1triples/Airport.xml`` ...) or the LoRA repo's JSON conversion
    (``train.json``). ``data_dir`` may hold ``train``/``dev``/``test`` as ``.xml``/``.json``
    files or folders. An example is *seen* when its category occurs in the training data
    (when a train split is loaded), else when it is one of :data:`WEBNLG_SEEN_CATEGORIES`.
    """
    given = {"train": train_file, "validation": validation_file, "test": test_file}
    files = _resolve_webnlg_inputs(data_dir, given)
    if files is None:
        data = _load_webnlg_hub(cache_dir)
    else:
        data = {split: read_webnlg(path, split) for split, path in files.items()}
    seen = {ex.meta["category"] for ex in data["train"]} if data.get("train") else WEBNLG_SEEN_CATEGORIES
    for examples in data.values():
        for ex in examples:
            ex.meta["seen"] = ex.meta["category"] in seen
    return data


def load_nlg_split(
    task: str,
    split: str,
    data_dir: str | Path | None = None,
    file: str | Path | None = None,
    cache_dir: str | Path | None = None,
    seen_categories: Iterable[str] | None = None,
) -> list[NLGExample]:
    """One split of E2E or WebNLG (e.g. the test split to evaluate on) without reading the other splits.

    From ``file``, else the split's well-known file in ``data_dir``, else the hub. WebNLG examples are
    *seen* when their category is in ``seen_categories`` (the training categories recorded with a run),
    else in :data:`WEBNLG_SEEN_CATEGORIES`.
    """
    if task not in ("e2e", "webnlg"):
        raise DataError(f"no NLG task {task!r}; expected e2e or webnlg")
    if file is None and data_dir is not None:
        names = _E2E_SPLIT_FILES if task == "e2e" else {
            s: tuple(f"{n}{ext}" for n in stems for ext in (".xml", ".json", "")) for s, stems in _WEBNLG_SPLIT_NAMES.items()
        }  # fmt: skip
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise DataError(f"{task} data_dir not found or not a directory: {root}")
        file = next((root / n for n in names[split] if (root / n).exists()), None)
        if file is None:
            raise DataError(f"{task}: none of {list(names[split])} found in {root}")
    if file is None:
        examples = (load_e2e if task == "e2e" else load_webnlg)(cache_dir=cache_dir).get(split) or []
    else:
        examples = read_e2e_file(file, split) if task == "e2e" else read_webnlg(file, split)
    if task == "webnlg":
        seen = set(seen_categories) if seen_categories is not None else WEBNLG_SEEN_CATEGORIES
        for ex in examples:
            ex.meta["seen"] = ex.meta["category"] in seen
    return examples


def read_webnlg(path: str | Path, split: str = "train") -> list[NLGExample]:
    """Read a WebNLG XML file, a folder of XML files, or a LoRA-repo JSON file."""
    p = Path(path).expanduser()
    if p.is_dir():
        xml_files = sorted(p.rglob("*.xml"))
        if not xml_files:
            raise DataError(f"no .xml files in WebNLG {split} folder {p}")
        return [ex for f in xml_files for ex in read_webnlg(f, split)]
    p = check_file(p, f"WebNLG {split} file")
    entries = _webnlg_json_entries(p) if p.suffix.lower() == ".json" else _webnlg_xml_entries(p)
    examples = []
    for category, eid, size, triples, refs in entries:
        if not refs and split != "test":
            continue  # no usable reference: nothing to train or score on
        meta = {"category": category, "eid": eid, "size": size, "triples": triples}
        examples.append(NLGExample(linearize_triples(triples), refs, meta))
    if not examples:
        raise DataError(f"{p}: no WebNLG entries with usable lexicalisations")
    return examples


_Entry = tuple[str, str, int, list[Triple], list[str]]


def _webnlg_xml_entries(p: Path) -> list[_Entry]:
    try:
        root = ET.parse(p).getroot()
    except ET.ParseError as exc:
        raise DataError(f"{p}: malformed WebNLG XML ({exc})") from None
    entries = root.findall("./entries/entry")
    if not entries:
        raise DataError(f"{p}: no <benchmark><entries><entry> elements; is this a WebNLG XML file?")
    out = []
    for entry in entries:
        eid = entry.get("eid", "")
        mtriples = entry.findall("./modifiedtripleset/mtriple")
        if not mtriples:
            raise DataError(f"{p}: entry eid={eid!r} has no <modifiedtripleset><mtriple>")
        triples = [parse_triple(t.text or "") for t in mtriples]
        refs = [_lex_text(lex) for lex in entry.findall("lex") if lex.get("comment") in _GOOD_COMMENTS]
        size = _int_or(entry.get("size"), len(triples))
        out.append((entry.get("category", ""), eid, size, triples, [r for r in refs if r]))
    return out


def _lex_text(lex: ET.Element) -> str:
    """The text of a ``<lex>``: its own text, or its ``<text>`` child in the enriched releases."""
    child = lex.find("text")
    text = child.text if child is not None else lex.text
    return " ".join((text or "").split())


def _webnlg_json_entries(p: Path) -> list[_Entry]:
    try:
        obj = json.loads(read_text(p, "WebNLG file"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}: invalid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("entries"), list):
        raise DataError(f"{p}: expected the LoRA WebNLG JSON layout {{'entries': [{{'1': {{...}}}}, ...]}}")
    out = []
    for i, item in enumerate(obj["entries"]):
        entry = next(iter(item.values())) if isinstance(item, dict) and len(item) == 1 else item
        try:
            triples = [(t["subject"], t["property"], t["object"]) for t in entry["modifiedtripleset"]]
            refs = [lex["lex"].strip() for lex in entry["lexicalisations"] if lex.get("comment") in _GOOD_COMMENTS]
        except (KeyError, TypeError) as exc:
            raise DataError(f"{p}: entry {i + 1} lacks modifiedtripleset/lexicalisations ({exc})") from None
        size = _int_or(entry.get("size"), len(triples))
        out.append((entry.get("category", ""), str(entry.get("xml_id", i + 1)), size, triples, [r for r in refs if r]))
    return out


def _resolve_webnlg_inputs(data_dir: str | Path | None, given: dict[str, str | Path | None]) -> dict[str, Path] | None:
    names = {
        split: tuple(f"{n}{ext}" for n in stems for ext in (".xml", ".json", ""))
        for split, stems in _WEBNLG_SPLIT_NAMES.items()
    }
    return _resolve_split_files(data_dir, given, names, "WebNLG")


def _load_webnlg_hub(cache_dir: str | Path | None) -> dict[str, list[NLGExample]]:
    raw = _load_from_hub(list(WEBNLG_HUB_PATHS), cache_dir, "WebNLG")
    out: dict[str, list[NLGExample]] = {}
    for split, ds in raw.items():
        examples = []
        for row in ds:
            if "modified_triple_sets" in row:  # web_nlg layout
                triples = [parse_triple(t) for t in row["modified_triple_sets"]["mtriple_set"][0]]
                lex = row["lex"]
                refs = [t for t, c in zip(lex["text"], lex["comment"], strict=False) if c in _GOOD_COMMENTS]
            else:  # GEM layout
                triples = [parse_triple(t) for t in row["input"]]
                refs = list(row.get("references") or [row["target"]])
            meta = {"category": row.get("category", ""), "eid": str(row.get("eid", "")), "size": len(triples),
                    "triples": triples}  # fmt: skip
            if refs or split == "test":
                examples.append(NLGExample(linearize_triples(triples), refs, meta))
        out[split] = examples
    return out


# --------------------------------------------------------------------------------------------
# shared helpers


def _group(pairs: Iterable[tuple[str, str | None, dict[str, Any]]], origin: str | Path) -> list[NLGExample]:
    """Merge rows with the same source into one example (first-appearance order, refs in order)."""
    by_source: dict[str, NLGExample] = {}
    for source, ref, meta in pairs:
        ex = by_source.get(source)
        if ex is None:
            ex = by_source[source] = NLGExample(source, [], dict(meta))
        if ref:
            ex.references.append(ref)
    if not by_source:
        raise DataError(f"{origin}: no examples")
    return list(by_source.values())


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _resolve_split_files(
    data_dir: str | Path | None,
    given: dict[str, str | Path | None],
    names: dict[str, tuple[str, ...]],
    what: str,
) -> dict[str, Path] | None:
    """Per-split files from explicit arguments or from well-known names in ``data_dir``."""
    files = {split: Path(p) for split, p in given.items() if p is not None}
    if data_dir is not None and files:
        raise DataError("give either data_dir or train/validation/test files, not both")
    if data_dir is None:
        return files or None
    root = Path(data_dir).expanduser()
    if not root.is_dir():
        raise DataError(f"{what} data_dir not found or not a directory: {root}")
    for split, candidates in names.items():
        found = next((root / n for n in candidates if (root / n).exists()), None)
        if found is not None:
            files[split] = found
    if "train" not in files:
        raise DataError(f"{what}: none of {list(names['train'])} found in {root}")
    return files


def _load_from_hub(candidates: list[tuple[str, str | None]], cache_dir: str | Path | None, what: str) -> dict[str, Any]:
    """Try each (path, config) on the hub; return its splits with ``dev`` renamed ``validation``."""
    from datasets import load_dataset

    errors = []
    for path, config in candidates:
        try:
            raw = load_dataset(path, config, cache_dir=str(cache_dir) if cache_dir else None)
        except Exception as exc:  # noqa: BLE001 - collected into one DataError below
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            errors.append(f"{path}: {type(exc).__name__}: {first}")
            continue
        return {("validation" if s == "dev" else s): raw[s] for s in raw if s in ("train", "dev", "validation", "test")}
    raise DataError(f"could not load {what} from the hub ({'; '.join(errors)}); pass data_dir or local files")
