"""Without --out, predict and eval write into a new runs/ folder each time."""

from __future__ import annotations

import json

from fixtures import save_untrained_checkpoint, write_image, write_tiny_bananas

from tinyssd.cli import main


def test_predict_without_out_never_writes_over_an_earlier_result(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ckpt = save_untrained_checkpoint(tmp_path / "w.safetensors", ["a"], image_size=64)
    image = write_image(tmp_path / "photos" / "a.png")
    args = ["predict", str(image), "--weights", str(ckpt), "--threshold", "0"]
    assert main(args) == 0
    first = (tmp_path / "runs" / "predict" / "a.png").read_bytes()
    write_image(image, seed=1)  # another picture under the same name
    assert main(args) == 0
    lines = [json.loads(s) for s in capsys.readouterr().out.splitlines()]
    assert [d["picture"] for d in lines] == ["runs/predict/a.png", "runs/predict2/a.png"]
    assert (tmp_path / "runs" / "predict" / "a.png").read_bytes() == first
    assert not (tmp_path / "predictions").exists()


def test_eval_without_out_writes_a_new_report_folder_each_time(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = write_tiny_bananas(tmp_path / "data", n_train=2, n_val=2, size=64)
    ckpt = save_untrained_checkpoint(tmp_path / "w.safetensors", ["banana"], image_size=64)
    for _ in range(2):
        assert main(["eval", "--weights", str(ckpt), "--data", str(data)]) == 0
    for run in ("eval", "eval2"):
        assert (tmp_path / "runs" / run / "results.json").is_file()
        assert (tmp_path / "runs" / run / "PR_curve.png").is_file()
    assert not (tmp_path / "PR_curve.png").exists()
