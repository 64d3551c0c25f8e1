"""The ``tinyssd`` command: argument parsing only; every command calls the Python API."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from .data.base import DataError


def _train(a: argparse.Namespace) -> None:
    from .engine.train import train

    train(
        data=a.data,
        format=a.format,
        model=a.model,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        weight_decay=a.weight_decay,
        momentum=a.momentum,
        image_size=a.image_size,
        out=a.out,
        seed=a.seed,
        resume=a.resume,
        device=a.device,
        augment=a.augment,
        loss=a.loss,
        compile=a.compile,
        precision=a.precision,
        workers=a.workers,
        stop_ap50=a.stop_ap50,
    )


def _predict(a: argparse.Namespace) -> None:
    from .api import load, predict_files

    det = load(a.weights, device=a.device, precision=a.precision)
    for line in predict_files(det, a.inputs, threshold=a.threshold, out=a.out):
        print(json.dumps(line), flush=True)


def _eval(a: argparse.Namespace) -> None:
    from .api import evaluate_run

    evaluate_run(a.weights, a.data, split=a.split, format=a.format, json_out=a.json, out=a.out)


def _data_download(a: argparse.Namespace) -> None:
    from .data.download import download_bananas

    print(download_bananas(a.to))


def _data_synth(a: argparse.Namespace) -> None:
    from .data.synthetic import make_synthetic

    root = make_synthetic(
        a.out_dir, train=a.train, val=a.val, classes=a.classes, seed=a.seed, size=a.size
    )
    print(root)


def _data_check(a: argparse.Namespace) -> None:
    from .data.check import check_dataset

    report = check_dataset(a.dir, format=a.format)
    print(report.summary(first=a.first))


def _data_convert(a: argparse.Namespace) -> None:
    from .data.convert import convert

    print(convert(a.src, to=a.to, out=a.out, format=a.format))


def _export(a: argparse.Namespace) -> None:
    from .export.onnx import export_onnx

    print(export_onnx(a.weights, a.out, opset=a.opset))


def _bench(a: argparse.Namespace) -> None:
    from .engine.benchmark import run_benchmarks

    print(json.dumps(run_benchmarks(quick=a.quick), indent=1))


def _demo(a: argparse.Namespace) -> None:
    from .api import demo

    demo(out=a.out, epochs=a.epochs, data=a.data)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tinyssd", description=__doc__.splitlines()[0])
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    fmt = dict(default="auto", choices=["auto", "bananas", "voc", "coco", "yolo"])

    t = sub.add_parser("train", help="train a detector (the chapter's settings are the defaults)")
    t.add_argument("--data", help="data folder; default: the built-in synthetic data set")
    t.add_argument("--format", **fmt)
    t.add_argument("--model", default="tiny_ssd", help="tiny_ssd or ssd300_vgg16")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=0.2)
    t.add_argument("--weight-decay", type=float, default=5e-4)
    t.add_argument("--momentum", type=float, default=0.0, help="SGD momentum (chapter: 0)")
    t.add_argument("--image-size", type=int, default=256)
    t.add_argument("--out", help="run folder (default runs/NAME)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--resume", help="run folder or checkpoint file to continue from")
    t.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    t.add_argument(
        "--augment",
        default="none",
        help="none, ssd (all four), or a comma list of photometric,expand,crop,flip",
    )
    t.add_argument(
        "--loss",
        default="chapter",
        help="chapter (CE + masked L1) or key=value list, e.g. box=smooth_l1,sigma=1,"
        "cls=focal,gamma=2,alpha=0.25,neg_pos=3,cls_weight=1,box_weight=1,normalize=positives",
    )
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="bf16 autocast for the forward pass; auto = bf16 where the hardware has it",
    )
    t.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    t.add_argument("--stop-ap50", type=float, help="stop once val AP50 reaches this value")
    t.set_defaults(func=_train)

    pr = sub.add_parser("predict", help="draw and print detections for images")
    pr.add_argument("inputs", nargs="+", help="image files or folders")
    pr.add_argument("--weights", required=True, help="run folder or checkpoint file")
    pr.add_argument("--threshold", type=float, default=0.9)
    pr.add_argument("--out", default="predictions")
    pr.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    pr.add_argument(
        "--precision",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="bf16 autocast for the network; auto = bf16 where the hardware has it",
    )
    pr.set_defaults(func=_predict)

    e = sub.add_parser("eval", help="VOC and COCO mAP of a trained detector")
    e.add_argument("--weights", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="val")
    e.add_argument("--format", **fmt)
    e.add_argument("--json", help="write the metrics dict here")
    e.add_argument("--out", default=".", help="folder for pr_curve.png")
    e.set_defaults(func=_eval)

    d = sub.add_parser("data", help="download, synthesise, check and convert data sets")
    dsub = d.add_subparsers(dest="data_command", required=True)
    dl = dsub.add_parser("download", help="download a data set")
    dl.add_argument("name", choices=["bananas"])
    dl.add_argument("--to", required=True)
    dl.set_defaults(func=_data_download)
    sy = dsub.add_parser("synth", help="write the procedural data set")
    sy.add_argument("out_dir")
    sy.add_argument("--train", type=int, default=1000)
    sy.add_argument("--val", type=int, default=100)
    sy.add_argument("--classes", type=int, default=3)
    sy.add_argument("--seed", type=int, default=0)
    sy.add_argument("--size", type=int, default=256, help="image side in pixels")
    sy.set_defaults(func=_data_synth)
    ch = dsub.add_parser("check", help="report problems in a data set")
    ch.add_argument("dir")
    ch.add_argument("--format", **fmt)
    ch.add_argument("--first", type=int, default=3, help="files listed per problem kind")
    ch.set_defaults(func=_data_check)
    cv = dsub.add_parser("convert", help="convert a data set to another format")
    cv.add_argument("src")
    cv.add_argument("--to", required=True, choices=["voc", "coco", "yolo", "bananas"])
    cv.add_argument("out")
    cv.add_argument("--format", **fmt)
    cv.set_defaults(func=_data_convert)

    x = sub.add_parser("export", help="export a trained detector to ONNX")
    x.add_argument("--weights", required=True)
    x.add_argument("--out", required=True)
    x.add_argument("--opset", type=int, default=17)
    x.set_defaults(func=_export)

    b = sub.add_parser("bench", help="measure training and prediction speed on this machine")
    b.add_argument("--quick", action="store_true")
    b.set_defaults(func=_bench)

    m = sub.add_parser("demo", help="synthesise data, train briefly, predict, show pictures")
    m.add_argument("--out", default="runs/demo")
    m.add_argument("--epochs", type=int, default=None)
    m.add_argument("--data", help="banana-layout folder; default: the built-in synthetic set")
    m.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if a.verbose else logging.INFO, format="%(message)s", stream=sys.stderr
    )
    try:
        a.func(a)
    except (DataError, FileNotFoundError) as e:
        print(f"tinyssd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tinyssd: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
