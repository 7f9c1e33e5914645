"""`layerif scores` / `layerif allocate`: thin over the package, one-line errors."""
import io

import pandas as pd
import pytest

from layerif import ScoreConfig, allocate, cli, layer_scores
from layerif.data import load_task


@pytest.fixture
def scores_dir(tiny, tmp_path):
    model, tok = tiny
    config = ScoreConfig(n_train=6, n_val=3, max_length=24, batch_size=3, device="cpu")
    s = layer_scores(model, tok, load_task("mrpc", "train", n=6),
                     load_task("mrpc", "validation", n=3), config, task="mrpc", progress=False)
    return s.save(tmp_path / "scores"), s


def test_allocate_experts_csv_equals_package(scores_dir, capsys):
    path, s = scores_dir
    assert cli.main(["allocate", "experts", str(path), "--total", "10", "--beta", "2"]) == 0
    table = pd.read_csv(io.StringIO(capsys.readouterr().out), index_col="layer")
    expected = allocate.experts(s.aggregate("positive"), 10, 2.0)
    assert table["experts"].tolist() == expected.tolist()
    assert table["score"].to_numpy() == pytest.approx(s.aggregate("positive").to_numpy())


def test_allocate_refuses_to_overwrite_and_names_bad_arguments(scores_dir, tmp_path, capsys):
    path, _ = scores_dir
    out = tmp_path / "experts.csv"
    assert cli.main(["allocate", "experts", str(path), "--total", "10", "--out", str(out)]) == 0
    with pytest.raises(SystemExit) as err:
        cli.main(["allocate", "experts", str(path), "--total", "10", "--out", str(out)])
    assert err.value.code == 2 and "exists" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["allocate", "experts", str(path)])
    assert "--total is required" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["allocate", "experts", str(tmp_path / "nothing"), "--total", "4"])
    assert "holds no manifest.json" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["allocate", "experts", str(path), "--total", "2"])
    assert "total=2" in capsys.readouterr().err
