"""layerif.paper: the YAML against the paper's text (re-parsed here), and compare()."""
import math
import os
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from layerif import paper

TEXT = Path(os.environ.get("LAYERIF_PAPER_TEXT", Path(__file__).resolve().parents[2] / "shared" / "paper"
                           / "layerif_paper_arxiv2505.23811.txt"))
needs_text = pytest.mark.skipif(not TEXT.exists(), reason=f"paper text not at {TEXT} (set LAYERIF_PAPER_TEXT)")
NUMBER_ROW = re.compile(r"^(\S.*?)((?:\s+-?\d+\.\d+)+)$")
TABLE_IDS = [f"table{k}" for k in range(1, 9)]


@pytest.fixture(scope="module")
def lines():
    return TEXT.read_text(encoding="utf-8").splitlines()


def caption_line(lines, prefix):
    hits = [i for i, line in enumerate(lines) if line.startswith(prefix)]
    assert len(hits) == 1, prefix
    return hits[0]


def parse_grid(lines, k):
    """(row labels, values) of Table k from the text: the label-then-numbers lines after its caption."""
    i = caption_line(lines, f"Table {k}:")
    if k in (7, 8):  # printed on one line: ". Algorithm Average Accuracy p-value Name acc p** ..."
        cells = re.findall(r"(\w+) (\d+\.\d+) (\d\.\d+|-)\**", lines[i + 2])
        return [c[0] for c in cells], [[float(c[1]), math.nan if c[2] == "-" else float(c[2])] for c in cells]
    labels, values = [], []
    for line in lines[i + 1:]:
        if not line.strip():
            break
        if k == 6:
            m = re.match(r"^(ϵ=\d\.\d)", line)
            if not m:
                continue  # the header line
            label = m.group(1)
            nums = [float(v) * (-1 if s == "-" else 1) for s, v in re.findall(r"\(([+-])\) (\d+\.\d+)", line)]
        else:
            m = NUMBER_ROW.match(line)
            if not m:
                continue  # a header line
            label, nums = m.group(1), [float(v) for v in m.group(2).split()]
        labels.append(label)
        values.append(nums)
    return labels, values


def test_every_entry_loads():
    ids = paper.tables()
    assert ids[:8] == TABLE_IDS and {"fig2", "fig3"} <= set(ids)
    for table_id in ids:
        frame = paper.table(table_id)
        assert frame.attrs["id"] == table_id and frame.attrs["caption"] and frame.attrs["model"]
        assert isinstance(frame.attrs["source_line"], int)
        if table_id.startswith("table"):
            assert frame.shape[0] >= 3 and frame.index.is_unique and frame.columns.is_unique
        else:
            assert frame.empty and paper.claims(table_id)


@needs_text
@pytest.mark.parametrize("k", range(1, 9))
def test_tables_match_the_text(lines, k):
    labels, values = parse_grid(lines, k)
    frame = paper.table(f"table{k}")
    assert list(frame.index) == labels
    assert frame.shape == (len(values), len(values[0]))
    np.testing.assert_array_equal(frame.to_numpy(), np.array(values))
    assert frame.attrs["source_line"] == caption_line(lines, f"Table {k}:") + 1


@needs_text
def test_printed_column_counts(lines):
    header = lines[caption_line(lines, "Table 2:") + 1].split()
    assert header[0] == "Method" and list(paper.table("table2").columns) == header[1:]
    assert list(paper.table("table5").columns) == lines[caption_line(lines, "Table 5:") + 1].split()[1:]
    assert list(paper.table("table6").columns) == lines[caption_line(lines, "Table 6:") + 1].split()
    sub = lines[caption_line(lines, "Table 1:") + 2].split()  # 2468 5555 8642 +ve Top 25% All
    assert paper.table("table1").shape[1] == 1 + 3 + 3 and sub[:3] == ["2468", "5555", "8642"]


@needs_text
@pytest.mark.parametrize("entry_id", ["table1", "table2", "table3", "table4", "table5", "fig2", "fig3"])
def test_captions_as_printed(lines, entry_id):
    caption = paper.table(entry_id).attrs["caption"]
    assert lines[paper.table(entry_id).attrs["source_line"] - 1] == caption


@needs_text
@pytest.mark.parametrize("entry_id", paper.tables())
def test_claims_quote_their_line(lines, entry_id):
    squash = " ".join
    for claim in paper.claims(entry_id):
        assert squash(claim["quote"].split()) in squash(lines[claim["line"] - 1].split())
        if claim["value"] is not None:
            assert f"{claim['value']:.2f}%" in claim["quote"]


def test_claims_agree_with_the_printed_tables():
    t1, t2, t8 = paper.table("table1"), paper.table("table2"), paper.table("table8")
    gain = lambda new, old: round(100 * (new / old - 1), 2)  # noqa: E731
    assert gain(t1.at["Average", "LayerIF (Top 25%)"], t1.at["Average", "MoLA(8642)"]) == 1.61
    assert gain(t2.at["LayerIF", "SparseGPT"], t2.at["OWL", "SparseGPT"]) == 1.03
    assert gain(t2.at["LayerIF", "SparseGPT"], t2.at["AlphaPruning", "SparseGPT"]) == 0.90
    assert gain(t8.at["LayerIF", "Average Accuracy"], t8.at["OWL", "Average Accuracy"]) == 0.37
    assert [c["value"] for c in paper.claims("fig3") if c["value"] is not None] == [0.37]


def test_compare_differences_notes_and_both_sides():
    ours = pd.DataFrame({"wanda": [0.60, 0.57], "sparsegpt": [0.61, 0.62], "extra_unused": [1.0, 1.0]},
                        index=["uniform", "layerif"]).drop(columns="extra_unused")
    out = paper.compare(ours, "table2", scale=100, note="SmolLM2")
    assert out.shape == (16, 4) and list(out.columns) == ["paper", "ours", "difference", "note"]
    # paper values typed from the printed Table 2
    assert out.loc[("Uniform", "Wanda"), "paper"] == 58.71
    assert out.loc[("Uniform", "Wanda"), "difference"] == pytest.approx(60.0 - 58.71)
    assert out.loc[("LayerIF", "SparseGPT"), "difference"] == pytest.approx(62.0 - 60.61)
    assert out.loc[("LayerIF", "SparseGPT"), "note"] == "SmolLM2"
    assert out.loc[("OWL", "Average"), "note"] == "SmolLM2; not computed here"
    assert np.isnan(out.loc[("OWL", "Average"), "ours"]) and out.loc[("OWL", "Average"), "paper"] == 58.30
    computed = out["ours"].notna()
    assert computed.sum() == 4 and (out.loc[~computed, "note"].str.endswith("not computed here")).all()


def test_compare_stand_ins_and_aliases():
    ours = pd.DataFrame({"positive": [80.0, 70.0], "alphalora": [75.0, 71.0]}, index=["sst2", "csqa"])
    out = paper.compare(ours, "table1", rows={"sst2": "Cola"}, columns={"positive": "LayerIF (+ve)"})
    cola = out.loc[("Cola", "LayerIF (+ve)")]
    assert cola["ours"] == 80.0 and cola["difference"] == pytest.approx(80.0 - 83.60)
    assert cola["note"] == "stand-in: sst2 for Cola"  # positive is an alias of LayerIF (+ve): no note
    common = out.loc[("Common Q", "AlphaLora")]
    assert common["ours"] == 71.0 and common["note"] == ""  # csqa is Common Q's registry name
    assert out.loc[("MRPC", "AlphaLora"), "note"] == "not computed here"


def test_compare_series_and_not_in_paper():
    rho = pd.Series({"mrpc": -0.1, "cola": 0.5}, name="rho")
    out = paper.compare(rho, "table3")
    assert out.loc[("MRPC", "Correlation"), "difference"] == pytest.approx(-0.1 - (-0.22))
    assert len(out) == 5
    ours = pd.DataFrame({"Average Accuracy": [0.80, 0.79], "p-value": [np.nan, 0.01]}, index=["LayerIF", "AlphaLora"])
    t7 = paper.compare(ours, "table7")
    assert t7.loc[("LayerIF", "p-value"), "note"] == "" and np.isnan(t7.loc[("LayerIF", "p-value"), "paper"])
    ours.loc["LayerIF", "p-value"] = 0.5
    assert paper.compare(ours, "table7").loc[("LayerIF", "p-value"), "note"] == "not in paper"


@pytest.mark.parametrize("kwargs, match", [
    ({"table_id": "table9"}, "table_id='table9'"),
    ({"table_id": "fig2"}, "table_id='fig2'"),
    ({"table_id": "table2", "rows": {"uniform": "Random"}}, r"rows=\['Random'\]"),
    ({"table_id": "table2", "ours": pd.DataFrame({"wanda": [1.0]}, index=["piqa"])}, "piqa"),
    ({"table_id": "table2", "ours": pd.DataFrame({"lora": [1.0]}, index=["owl"])}, "^columns=.*lora"),
    ({"table_id": "table2", "ours": pd.DataFrame({"wanda": [1.0, 2.0]}, index=["owl", "x"]),
      "rows": {"x": "OWL"}}, "^rows=.*OWL"),
])
def test_compare_rejects_unknown_labels(kwargs, match):
    kwargs.setdefault("ours", pd.DataFrame({"wanda": [1.0]}, index=["uniform"]))
    with pytest.raises(ValueError, match=match):
        paper.compare(**kwargs)


def test_package_data_declared():
    text = (Path(paper.__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert '[tool.setuptools.package-data]\nlayerif = ["paper_numbers.yaml"]' in text
