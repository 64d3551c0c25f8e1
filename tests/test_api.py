import json

import numpy as np
import pytest
import torch
from fixtures import save_untrained_checkpoint
from PIL import Image

import tinyssd
from tinyssd.api import predict_files
from tinyssd.cli import main
from tinyssd.data.base import DataError
from tinyssd.data.dataset import resize_image
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
