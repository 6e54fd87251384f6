"""Fuzz corpus, malformed input files (test_fuzz_inputs.py holds flags, output locations and runs;
test_fuzz_checkpoints.py checkpoints): malformed ONNX files (eval, bench), and image folders holding
what is not an image, reaching an image twice through links, a class gained since training or one
training image. Each case is refused with exit 2, one line on stderr naming the problem, no
traceback and nothing written (the ``refused`` fixture)."""

from __future__ import annotations

import os

import pytest

RUN = ["--device", "cpu"]  # as in test_fuzz_inputs.py
WITH_DEVICE = ("train", "stats", "prune", "eval", "sweep")  # the commands that take --device


ONNX_EVAL = [
    ("no sdprune metadata", {"metadata": {"sdprune_version": None}}, "has no sdprune metadata"),
    *[(f"no {k}", {"metadata": {k: None}}, f"lacks {k}") for k in ("classes", "input_shape", "mean", "std", "dataset")],
    ("classes not JSON", {"metadata": {"classes": "[0, 1"}}, "not valid JSON"),
    ("9 classes", {"metadata": {"classes": '["a","b","c","d","e","f","g","h","i"]'}}, "the graph outputs 10"),
    ("classes as numbers", {"metadata": {"classes": "[0,1,2,3,4,5,6,7,8,9]"}}, "class names"),
    ("no classes", {"metadata": {"classes": "[]"}}, "class names"),
    ("ten identical classes", {"metadata": {"classes": '["a","a","a","a","a","a","a","a","a","a"]'}},
     "names 'a' twice"),
    ("classes as an object", {"metadata": {"classes": '{"a": 1}'}}, "class names"),
    ("input shape of another size", {"metadata": {"input_shape": "[1, 9, 9]"}}, "the graph takes"),
    ("input shape of 2 numbers", {"metadata": {"input_shape": "[1, 8]"}}, "input_shape must be"),
    ("input shape negative", {"metadata": {"input_shape": "[1, -8, 8]"}}, "input_shape must be"),
    ("mean of 2 channels", {"metadata": {"mean": "[0.1, 0.2]"}}, "mean has 2 values for 1 channels"),
    ("mean NaN", {"metadata": {"mean": "[NaN]"}}, "mean must be a list of finite numbers"),
    ("mean as text", {"metadata": {"mean": '"0.3"'}}, "mean must be a list of finite numbers"),
    ("std zero", {"metadata": {"std": "[0]"}}, "std must be positive"),
    ("std negative", {"metadata": {"std": "[-0.4]"}}, "std must be positive"),
    ("std infinite", {"metadata": {"std": "[Infinity]"}}, "std must be a list of finite numbers"),
    ("unknown dataset", {"metadata": {"dataset": "imagenet"}}, "dataset must be one of"),
    ("params as text", {"metadata": {"params": '"many"'}}, "params must be a whole number"),
    ("two inputs", {"extra_input": True}, "not an image classifier"),
    ("integer input", {"input_type": "int64"}, "expected a float32 image batch"),
    ("3-D output", {"output_rank": 3}, "not an image classifier"),
]
BROKEN_FILES = [("empty", b""), ("garbage", b"\x08\x01garbage\xff" * 40), ("text", b"hello, I am a model\n")]
ONNX_BENCH = [
    ("two inputs", {"extra_input": True}, [], "not an image classifier"),
    ("integer input", {"input_type": "int64"}, [], "expected a float32 image batch"),
    ("3-D output", {"output_rank": 3}, [], "not an image classifier"),
    ("symbolic image size", {"input_shape": ("batch", 1, "h", "w")}, [], "symbolic image size"),
    ("fixed batch", {"input_shape": (1, 1, 8, 8)}, ["--batch-sizes", "1,32"], "fixed batch size 1"),
]


@pytest.mark.parametrize("case", ONNX_EVAL, ids=[c[0] for c in ONNX_EVAL])
def test_malformed_onnx_is_refused_by_eval(case, onnx_file, refused):
    _, options, message = case
    assert message in refused(["eval", onnx_file(**options)])


@pytest.mark.parametrize("case", ONNX_BENCH, ids=[c[0] for c in ONNX_BENCH])
def test_malformed_onnx_is_refused_by_bench(case, onnx_file, refused):
    _, options, flags, message = case
    assert message in refused(["bench", onnx_file(**options), "--repeats", "1", "--warmup", "0", *flags])


@pytest.mark.parametrize("command", ["eval", "bench"])
@pytest.mark.parametrize("content", [c for _, c in BROKEN_FILES], ids=[n for n, _ in BROKEN_FILES])
def test_a_file_that_is_not_onnx_is_refused(command, content, tmp_path, refused):
    path = tmp_path / "model.onnx"
    path.write_bytes(content)
    refused([command, path])


@pytest.mark.parametrize("command", ["eval", "bench"])
def test_a_truncated_onnx_file_is_refused(command, onnx_file, refused):
    path = onnx_file()
    path.write_bytes(path.read_bytes()[:300])
    refused([command, path])


def test_the_valid_onnx_model_is_accepted(onnx_file, tmp_path, monkeypatch, capsys):
    """The corpus breaks a model eval and bench accept: refusals come from the damage alone."""
    from sdprune.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["eval", str(onnx_file()), "--quiet"]) == 0
    assert main(["bench", str(onnx_file()), "--repeats", "1", "--warmup", "0", "--batch-sizes", "1", "--quiet"]) == 0


def _image_folder(root, broken: dict[str, bytes] | None = None, splits=("train", "test"), classes=("a", "b")):
    from PIL import Image

    for split in splits:
        (root / split).mkdir()
        for c in classes:
            (root / split / c).mkdir()
            for i in range(2):
                Image.new("RGB", (12, 12), (40 * i, 80, 120)).save(root / split / c / f"{i}.jpg")
    for name, content in (broken or {}).items():
        (root / name).write_bytes(content)
    return root


IMAGE_FOLDERS = [
    ("text named .jpg", {"broken": {"train/a/notes.jpg": b"these are not pixels"}}, [], "not a readable image"),
    ("truncated jpeg", {"broken": {"train/b/cut.jpg": None}}, [], "not a readable image"),
    ("truncated jpeg, worker processes", {"broken": {"test/a/cut.jpg": None}}, ["--workers", "2"],
     "not a readable image"),
    ("png of zeros", {"broken": {"test/b/zeros.png": b"\x00" * 64}}, [], "not a readable image"),
    ("no test split", {"splits": ("train",)}, [], "must hold train/ and test/"),
    ("no images", {"classes": ()}, [], "cannot read image folder"),
    ("one class", {"classes": ("a",)}, [], "a classifier needs at least 2 classes"),
]


@pytest.mark.parametrize("case", IMAGE_FOLDERS, ids=[c[0] for c in IMAGE_FOLDERS])
def test_an_image_folder_with_what_is_not_an_image_is_refused(case, tmp_path, refused):
    _, options, flags, message = case
    root = tmp_path / "images"
    root.mkdir()
    broken = dict(options.get("broken", {}))
    folder = _image_folder(root, {k: v for k, v in broken.items() if v is not None},
                           options.get("splits", ("train", "test")), options.get("classes", ("a", "b")))
    for name, content in broken.items():
        if content is None:  # the first bytes of a real JPEG
            (folder / name).write_bytes((folder / "train" / "a" / "0.jpg").read_bytes()[:200])
    line = refused(["train", "--dataset", "imagefolder", "--data-dir", folder, "--image-size", "8", "--epochs", "1",
                    "--out", tmp_path / "out", *flags, *RUN])
    assert message in line


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A run trained on an image folder of classes a and b, whose folder then gained a class c."""
    from sdprune.train.config import TrainConfig
    from sdprune.train.loop import train

    root = tmp_path_factory.mktemp("grown")
    (root / "images").mkdir()
    (root / "c-only").mkdir()
    folder = _image_folder(root / "images")
    train(TrainConfig(model="resnet20", dataset="imagefolder", data_dir=str(folder), image_size=8, epochs=1,
                      device="cpu", out=str(root / "run")))
    _image_folder(root / "c-only", classes=("c",))
    for split in ("train", "test"):
        (root / "c-only" / split / "c").rename(folder / split / "c")
    return root / "run" / "checkpoint.pt"


GROWN = {"eval": ["eval", "{ckpt}"], "stats": ["stats", "{ckpt}"], "prune": ["prune", "{ckpt}", "--keep", "0.5"],
         "sweep": ["sweep", "{ckpt}", "--keep", "0.5", "--criteria", "depth", "--no-onnx"],
         "export": ["export", "{ckpt}"], "resume": ["train", "--resume", "{ckpt}"]}


@pytest.mark.parametrize("command", list(GROWN))
def test_a_folder_that_gained_a_class_since_training_is_refused_by_every_command(command, folder_run, tmp_path,
                                                                                   refused):
    ckpt = tmp_path / "run" / "checkpoint.pt"  # a copy: default outputs land in the checked folder
    ckpt.parent.mkdir()
    ckpt.write_bytes(folder_run.read_bytes())
    device = RUN if command in WITH_DEVICE + ("resume",) else []
    line = refused([a.format(ckpt=ckpt) for a in GROWN[command]] + device)
    assert "has 3 classes, the model predicts 2 (new since training: 'c')" in line


LINKED_FOLDERS = [("a link cycle", "train/a/self", "."),  # torchvision's walk read it ~40 times: 6 images became 126
                  ("a second link to a class folder", "train/a/more", "../b"),
                  ("a link to an image of the folder", "train/b/copy.jpg", "../a/0.jpg")]


@pytest.mark.parametrize("case", LINKED_FOLDERS, ids=[c[0] for c in LINKED_FOLDERS])
def test_an_image_folder_reaching_an_image_twice_through_links_is_refused(case, tmp_path, refused):
    _, link, target = case
    root = tmp_path / "images"
    root.mkdir()
    folder = _image_folder(root)
    os.symlink(target, folder / link)
    line = refused(["train", "--dataset", "imagefolder", "--data-dir", folder, "--image-size", "8", "--epochs", "1",
                    "--out", tmp_path / "out", *RUN])
    assert str(folder / link) in line and "reached twice through a symbolic link" in line


def test_a_training_set_of_one_image_leaving_batchnorm_one_value_is_refused(tmp_path, refused):
    """2 streamed images, one to the validation slice: every step is the one image left; tv_resnet18's 1x1 maps
    leave BatchNorm one value per channel."""
    from PIL import Image

    root = tmp_path / "images"
    for split in ("train", "test"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            Image.new("RGB", (12, 12), (10, 80, 120)).save(root / split / c / "0.png")
    line = refused(["train", "--dataset", "imagefolder", "--data-dir", root, "--image-size", "8", "--epochs", "1",
                    "--model", "tv_resnet18", "--data-mode", "stream", "--out", tmp_path / "out", *RUN])
    assert "a training set of 1 image leaves BatchNorm one value per channel" in line
