import json

import numpy as np
import pytest
import torch
from export_helpers import rewritten_checkpoint
from fixtures import save_untrained_checkpoint
from PIL import Image

import tinyssd
from tinyssd.cli import main
from tinyssd.commands import predict_files
from tinyssd.data.base import DataError
from tinyssd.images import resize_image
from tinyssd.inference import predict_batch


@pytest.fixture(scope="module")
def detector(tmp_path_factory):
    path = save_untrained_checkpoint(
        tmp_path_factory.mktemp("run") / "best.safetensors", ["cat", "dog"]
    )
    # fp32: these tests compare with the plain fp32 path (bf16 is in test_fast_paths.py)
    return tinyssd.load(path.parent, device="cpu", precision="fp32")


def _image(h=128, w=128, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (3, h, w), dtype=np.uint8))


def test_predict_accepts_path_pil_tensor_and_lists(detector, tmp_path):
    t = _image()
    path = tmp_path / "x.png"
    Image.fromarray(t.permute(1, 2, 0).numpy()).save(path)
    pil = Image.open(path)
    results = [detector.predict(x, threshold=0.2) for x in (t, path, str(path), pil)]
    batch = detector.predict([t, path], threshold=0.2)
    assert len(batch) == 2 and all(len(r) == 1 for r in results)
    for r in results + [[batch[1]]]:
        torch.testing.assert_close(r[0]["boxes"], results[0][0]["boxes"])
        assert set(r[0]) == {"boxes", "scores", "labels", "names"}
    d = results[0][0]
    assert len(d["scores"]) > 0 and (d["scores"] >= 0.2).all()
    assert d["names"] == [["cat", "dog"][i - 1] for i in d["labels"].tolist()]


def test_boxes_are_in_the_images_own_pixels(detector):
    image = _image(256, 384)  # height 256, width 384; the model sees 128 x 128
    got = detector.predict(image, threshold=0.2)[0]
    resized = resize_image(image, 128)[None]
    normalised = predict_batch(
        detector.model, resized, None, score_threshold=0.2, nms_threshold=0.45
    )[0]
    assert len(got["boxes"]) > 0
    torch.testing.assert_close(
        got["boxes"], normalised["boxes"] * torch.tensor([384, 256, 384, 256])
    )
    assert got["boxes"][:, 2].max() > 128  # not left in the model's 128 px frame


def test_bad_image_tensor_is_a_clear_error(detector):
    with pytest.raises(ValueError, match="uint8"):
        detector.predict(torch.zeros(3, 10, 10))


def test_predict_files_draws_pngs_and_reports_json(detector, tmp_path):
    for i in range(2):
        Image.fromarray(_image(96, 160, i).permute(1, 2, 0).numpy()).save(tmp_path / f"{i}.jpg")
    lines = list(predict_files(detector, [tmp_path], threshold=0.2, out=tmp_path / "out"))
    assert [line["image"] for line in lines] == [str(tmp_path / "0.jpg"), str(tmp_path / "1.jpg")]
    for line in lines:
        assert (line["width"], line["height"]) == (160, 96)
        assert Image.open(line["picture"]).size == (160, 96)
        assert len(line["boxes"]) == len(line["scores"]) == len(line["names"])
        json.dumps(line)


def test_cli_predict_prints_one_json_line_per_image(tmp_path, capsys):
    ckpt = save_untrained_checkpoint(tmp_path / "w.safetensors", ["banana"])
    Image.fromarray(_image().permute(1, 2, 0).numpy()).save(tmp_path / "a.png")
    code = main(
        [
            "predict",
            str(tmp_path / "a.png"),
            "--weights",
            str(ckpt),
            "--threshold",
            "0.3",
            "--out",
            str(tmp_path / "pred"),
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["names"][:1] in ([], ["banana"])
    assert (tmp_path / "pred" / "a.png").is_file()


def test_cli_errors_are_one_line_naming_the_file(tmp_path, capsys):
    code = main(["predict", str(tmp_path / "nope.png"), "--weights", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and str(tmp_path / "w") in err
    with pytest.raises(DataError, match="nope.png"):
        list(predict_files(None, [tmp_path / "nope.png"]))


def test_default_precision_is_bf16_where_the_cpu_has_it_and_close_to_fp32(tmp_path):
    ckpt = save_untrained_checkpoint(tmp_path / "w.safetensors", ["cat", "dog"])
    auto, fp32 = tinyssd.load(ckpt, device="cpu"), tinyssd.load(ckpt, "cpu", precision="fp32")
    supported = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert auto.autocast_dtype == (torch.bfloat16 if supported else None)
    assert fp32.autocast_dtype is None
    a, b = (d.predict(_image(), threshold=0.2)[0] for d in (auto, fp32))
    assert len(a["scores"]) > 0 and abs(float(a["scores"][0]) - float(b["scores"][0])) < 0.05


def _save(path, seed=0, size=(64, 80)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_image(*size, seed).permute(1, 2, 0).numpy()).save(path)
    return path


def test_pictures_never_overwrite_each_other_or_an_input(detector, tmp_path):
    _save(tmp_path / "a.jpg", 0)
    _save(tmp_path / "a.png", 1)
    _save(tmp_path / "sub" / "a.png", 2)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    lines = list(predict_files(detector, [tmp_path], threshold=0.2, out=tmp_path))
    pictures = [line["picture"] for line in lines]
    assert len(lines) == 3 and len(set(pictures)) == 3
    for p, data in before.items():
        assert p.read_bytes() == data, f"{p} was overwritten"
    assert str(tmp_path / "sub" / "a_2.png") in pictures  # beside its input, not over it


def test_folders_are_searched_recursively_and_an_empty_one_says_so(detector, tmp_path):
    _save(tmp_path / "x" / "y" / "deep.png")
    lines = list(predict_files(detector, [tmp_path / "x"], out=tmp_path / "out"))
    assert [line["image"] for line in lines] == [str(tmp_path / "x" / "y" / "deep.png")]
    assert lines[0]["picture"] == str(tmp_path / "out" / "y" / "deep.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        list(predict_files(detector, [tmp_path / "empty"]))


def test_a_corrupt_image_among_many_is_skipped_and_the_exit_code_says_so(tmp_path, capsys, caplog):
    ckpt = save_untrained_checkpoint(tmp_path / "w.safetensors", ["banana"])
    _save(tmp_path / "in" / "good1.png", 1)
    (tmp_path / "in" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    _save(tmp_path / "in" / "good2.png", 2)
    code = main(["predict", str(tmp_path / "in"), "--weights", str(ckpt), "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1
    assert len(captured.out.strip().splitlines()) == 2
    assert "1 input(s) skipped or cut short" in captured.err
    assert "skipped: " + str(tmp_path / "in" / "bad.png") in caplog.text


def test_one_default_threshold_for_the_api_and_the_cli():
    import inspect

    from tinyssd.cli import build_parser
    from tinyssd.options import DEFAULT_THRESHOLD
    from tinyssd.postprocess import PostprocessConfig
    from tinyssd.predict.base import resolve_for_model

    # threshold=None (not given) everywhere means the model's own threshold (F1-optimal on
    # val, stored at training), DEFAULT_THRESHOLD for a model without one
    api_default = inspect.signature(tinyssd.Detector.predict).parameters["threshold"].default
    files_default = inspect.signature(predict_files).parameters["threshold"].default
    cli_default = build_parser().parse_args(["predict", "x", "--weights", "w"]).threshold
    assert api_default is None and files_default is None and cli_default is None
    assert PostprocessConfig().score_threshold is None
    assert resolve_for_model(0.3, None, api_default).score_threshold == 0.3
    assert resolve_for_model(0.3, None, 0.6).score_threshold == 0.6  # an explicit one wins
    assert inspect.signature(tinyssd.Detector).parameters["score_threshold"].default == (
        DEFAULT_THRESHOLD
    )


def test_a_postprocess_config_and_keywords_select_the_same_detections(detector):
    from tinyssd.postprocess import PostprocessConfig

    image = _image(96, 128)
    post = PostprocessConfig(score_threshold=0.05, nms_threshold=0.6, max_detections=3)
    by_config = detector.predict(image, post=post)[0]
    by_keywords = detector.predict(image, threshold=0.05, nms_threshold=0.6, max_detections=3)[0]
    assert len(by_config["scores"]) == 3
    for key in ("boxes", "scores", "labels"):
        torch.testing.assert_close(by_config[key], by_keywords[key])
    with pytest.raises(TypeError, match="nms_treshold"):
        detector.predict(image, nms_treshold=0.6)


def test_numpy_arrays_and_4d_batches_are_accepted(detector):
    images = [_image(96, 128, i) for i in range(3)]
    by_tensor = detector.predict(images, threshold=0.2)
    as_hwc = [im.permute(1, 2, 0).numpy() for im in images]
    for result in (
        detector.predict(as_hwc, threshold=0.2),
        detector.predict(np.stack(as_hwc), threshold=0.2),
        detector.predict(torch.stack(images), threshold=0.2),
    ):
        assert len(result) == 3
        for a, b in zip(result, by_tensor, strict=True):
            torch.testing.assert_close(a["boxes"], b["boxes"])
    one = detector.predict(as_hwc[0], threshold=0.2)
    torch.testing.assert_close(one[0]["boxes"], by_tensor[0]["boxes"])
    with pytest.raises(ValueError, match="uint8 \\(H, W, 3\\)"):
        detector.predict(np.zeros((10, 10, 3), dtype=np.float32))


def test_predicted_boxes_stay_inside_the_image(detector):
    for seed in range(3):
        d = detector.predict(_image(70, 150, seed), threshold=0.0)[0]
        assert len(d["boxes"]) > 0
        assert d["boxes"].min() >= 0
        assert (d["boxes"][:, [0, 2]] <= 150).all() and (d["boxes"][:, [1, 3]] <= 70).all()


def test_load_says_which_checkpoint_it_took(tmp_path, caplog):
    ckpt = save_untrained_checkpoint(tmp_path / "best.safetensors", ["a"])
    caplog.set_level("INFO", logger="tinyssd")
    tinyssd.load(tmp_path, device="cpu")
    assert f"loaded {ckpt}" in caplog.text


def test_a_config_that_does_not_make_the_files_tensors_is_refused_naming_the_first(tmp_path):
    # the network is laid out on the meta device and compared with the file's tensors
    # before it is built: a config of 10**6 channels would cost gigabytes before failing
    source = save_untrained_checkpoint(tmp_path / "source.safetensors", ["a"], image_size=64)

    def wider(meta):
        meta["config"]["ssd"]["channels"][0] = 96

    bad = rewritten_checkpoint(source, tmp_path / "bad.safetensors", change=wider)
    with pytest.raises(tinyssd.CheckpointError) as e:
        tinyssd.load(bad, device="cpu")
    assert str(e.value) == (
        f"{bad}: cannot rebuild the model (bbox_heads.0.weight: (16, 64, 3, 3) in the file, "
        "(16, 96, 3, 3) in its config's network)"
    )


def test_the_demo_prints_the_runs_own_val_report_at_its_stored_threshold(tmp_path):
    from tinyssd.commands import demo_summary
    from tinyssd.engine.report import TrainResult

    rows = [
        {"class": "disc", "images": 9, "instances": 12, "precision": 1.0, "recall": 0.5},
        {
            "class": "all",
            "images": 10,
            "instances": 20,
            "precision": 0.9,
            "recall": 0.85,
            "AP50": 0.93,
            "AP": 0.67,
        },
    ]
    line = demo_summary(TrainResult(tmp_path, classes=rows, threshold=0.43))
    assert line == (
        "val (10 images): AP50 0.930, AP 0.670; at the drawn threshold 0.43 (F1-optimal "
        "on val): recall 0.850, precision 0.900"
    )
    assert demo_summary(TrainResult(tmp_path)) == "no val report: the data has no val images"
