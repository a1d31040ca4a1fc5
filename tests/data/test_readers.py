"""prepare's sources: directories, jsonl, Parquet, Arrow, save_to_disk directories, and bad records."""

import json

import numpy as np
import pytest

from slm_jax.cli import main
from slm_jax.data.prepare import prepare
from slm_jax.data.token_files import load_data_tokenizer, load_split
from slm_jax.errors import DataError

DOCS = ["first document", "second one\n", "третий"]


def prepared_text(out) -> str:
    ids = np.concatenate([load_split(out, s) for s in ("train", "val")])
    return load_data_tokenizer(out).decode(ids)


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def test_directory_reads_txt_recursively_in_order(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("bbbb\n")
    (tmp_path / "d" / "sub" / "a.txt").write_text("aaaa\n")
    (tmp_path / "d" / "skip.md").write_text("not read\n")
    meta = prepare([tmp_path / "d"], "char", tmp_path / "out", val_fraction=0.2)
    assert prepared_text(tmp_path / "out") == "bbbb\naaaa\n"  # sorted paths: d/b.txt < d/sub/a.txt
    assert len(meta["sources"]) == 2


@pytest.mark.parametrize("tokenizer", ["char", "byte"])
def test_jsonl_records_end_with_a_newline(tmp_path, tokenizer):
    src = write_jsonl(tmp_path / "d.jsonl", [{"body": d, "id": i} for i, d in enumerate(DOCS)])
    prepare([src], tokenizer, tmp_path / "out", val_fraction=0.3, text_field="body")
    assert prepared_text(tmp_path / "out") == "first document\nsecond one\nтретий\n"


def test_parquet_arrow_and_saved_dataset(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.ipc
    import pyarrow.parquet

    table = pa.table({"text": DOCS, "label": [0, 1, 2]})
    pyarrow.parquet.write_table(table, tmp_path / "t.parquet")
    with pa.OSFile(str(tmp_path / "t.arrow"), "wb") as f, pyarrow.ipc.new_file(f, table.schema) as w:
        w.write_table(table)
    saved = tmp_path / "saved"  # the layout of datasets' save_to_disk: an Arrow stream + state.json
    saved.mkdir()
    with pa.OSFile(str(saved / "data-00000-of-00001.arrow"), "wb") as f, pyarrow.ipc.new_stream(f, table.schema) as w:
        w.write_table(table)
    (saved / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    expected = "first document\nsecond one\nтретий\n"
    for i, src in enumerate([tmp_path / "t.parquet", tmp_path / "t.arrow", saved]):
        prepare([src], "char", tmp_path / f"out{i}", val_fraction=0.3)
        assert prepared_text(tmp_path / f"out{i}") == expected
    with pytest.raises(DataError, match=r"t\.parquet has no column 'body' \(its columns: text, label\)"):
        prepare([tmp_path / "t.parquet"], "char", tmp_path / "bad", text_field="body")


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", r"bad\.jsonl:2 is not valid JSON"),
        ('{"other": "x"}', r"bad\.jsonl:2 has no 'text' field; set --text-field"),
        ('{"text": ""}', r"bad\.jsonl:2: field 'text' is empty"),
        ('{"text": 5}', r"bad\.jsonl:2: field 'text' holds int"),
    ],
)
def test_bad_records_name_file_and_line_or_are_skipped(tmp_path, line, message):
    src = tmp_path / "bad.jsonl"
    src.write_text(f'{{"text": "good one"}}\n{line}\n{{"text": "good two"}}\n', encoding="utf-8")
    with pytest.raises(DataError, match=message + ".*--skip-bad-lines"):
        prepare([src], "char", tmp_path / "out")
    meta = prepare([src], "char", tmp_path / "out", val_fraction=0.3, skip_bad_lines=True)
    assert meta["bad_lines"]["skipped"] == 1 and "bad.jsonl:2" in meta["bad_lines"]["first"]
    assert prepared_text(tmp_path / "out") == "good one\ngood two\n"


def test_cli_reports_skipped_and_refuses_bad_input(capsys, tmp_path):
    src = tmp_path / "bad.jsonl"
    src.write_text('{"text": "good one two three"}\n{oops\n', encoding="utf-8")
    argv = ["data", "prepare", "--input", str(src), "--out", str(tmp_path / "out")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.jsonl:2" in err and err.count("\n") == 1
    assert main([*argv, "--skip-bad-lines"]) == 0
    assert "skipped 1 bad records" in capsys.readouterr().err
    assert main([*argv, "--tokenizer", "char", "--vocab-size", "300"]) == 2
    assert "--vocab-size applies only" in capsys.readouterr().err
