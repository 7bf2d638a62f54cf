"""Dataset specs (utils/spec.py, specs/): the shipped files hold the paper's values, a spec file of the
CIFAR-10 folders trains exactly as --model R32_C10, a spec no built-in model covers runs every stage,
evaluate and visualize on real pixels, and every bad spec ends in one line."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import classifier_training
import evaluate
import pretrain
import visualize
from tests.test_stages import chain, ckpt, run
from tests.trees import CIFAR10_CLASSES
from utils.data import build_datasets
from utils.errors import PatchDropError
from utils.spec import (CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, SPECS, get_spec, spec_of_checkpoint,
                        spec_record)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "cifar10_sample"
FAKE = ["--fake_data", "--train_samples", 32, "--test_samples", 16, "--batch_size", 16, "--num_workers", 0,
        "--device", "cpu", "--max_epochs", 1]

# The CIFAR-10 image folders described from scratch: the fields of R32_C10 under another name.
CIFAR10_FIELDS = {"name": "my_cifar10", "layout": "image_folder", "folder": "CIFAR10", "classes": 10,
                  "hr_size": 32, "grid": 4, "lr_size": 8, "classifier": "resnet32_cifar",
                  "policy": "resnet8_cifar", "mean": list(CIFAR_MEAN), "std": list(CIFAR_STD),
                  "augmentation": "cifar", "preset": "cifar"}


def toml_value(value) -> str:
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_spec(path: Path, fields: dict) -> Path:
    path.write_text("".join(f"{key} = {toml_value(value)}\n" for key, value in fields.items()))
    return path


def timing_free(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.endswith(("seconds", "images_per_second"))}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_shipped_spec_files_hold_the_papers_values():
    c10, c100, imagenet, fmow = (SPECS[name] for name in ("R32_C10", "R32_C100", "R50_ImgNet", "R34_fMoW"))
    assert (c10.num_classes, c100.num_classes, imagenet.num_classes, fmow.num_classes) == (10, 100, 1000, 62)
    assert (c10.mean, c10.std, c100.mean) == (CIFAR_MEAN, CIFAR_STD, CIFAR_MEAN)
    assert (imagenet.mean, fmow.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert [(s.hr_size, s.grid, s.patch_size, s.lr_size) for s in (c10, imagenet)] == [(32, 4, 8, 8), (224, 4, 56, 56)]
    assert (c10.augmentation, imagenet.augmentation, fmow.augmentation) == ("cifar", "imagenet", "fmow")
    assert get_spec(str(ROOT / "specs" / "R32_C10.toml")) == c10  # the file is the model


@pytest.mark.parametrize("change,message", [
    ({"colour": "red"}, "unknown field colour; the fields are name, layout"),
    ({"grid": None}, "missing field grid"),
    ({"grid": 5}, "the grid of 5 patches a side does not divide the HR side 32"),
    ({"lr_size": 6}, "lr_size 6 must be a whole multiple of the grid .4. and divide hr_size 32"),
    ({"classifier": "resnet99"}, "classifier = 'resnet99' is not one of 'resnet8_cifar', 'resnet32_cifar'"),
    ({"layout": "hdf5"}, "layout = 'hdf5' is not one of 'image_folder', 'csv'"),
    ({"augmentation": "mixup"}, "augmentation = 'mixup' is not one of 'cifar', 'imagenet', 'fmow'"),
    ({"preset": "fast"}, "preset = 'fast' is not one of 'cifar', 'imagenet'"),
    ({"mean": [0.5, 0.5]}, r"mean must be three numbers \(one per RGB channel\), got \[0.5, 0.5\]"),
    ({"std": [0.2, 0.0, 0.2]}, "std must be positive"),
    ({"classes": 1}, "classes must be a number of 2 or more"),
])
def test_a_bad_spec_is_one_line_naming_the_field(tmp_path, change, message):
    fields = {k: v for k, v in {**CIFAR10_FIELDS, **change}.items() if v is not None}
    path = write_spec(tmp_path / "bad.toml", fields)
    with pytest.raises(PatchDropError, match=f"{path}: {message}"):
        get_spec(str(path))


def test_a_malformed_or_missing_spec_file_is_one_line(tmp_path):
    (tmp_path / "broken.toml").write_text('name = "x"\ngrid = \n')
    with pytest.raises(PatchDropError, match="broken.toml: not a valid TOML spec file"):
        get_spec(str(tmp_path / "broken.toml"))
    with pytest.raises(PatchDropError, match="--model .*nothing.toml: no such spec file"):
        get_spec(str(tmp_path / "nothing.toml"))
    with pytest.raises(PatchDropError, match="unknown --model 'R18'; choose one of: R32_C10, .* or give the path"):
        get_spec("R18")


def cifar_like_folders(root: Path, classes, size: int = 32, per_class: int = 2) -> Path:
    for split in ("train", "test"):
        for c, name in enumerate(classes):
            folder = root / "mine" / split / name
            folder.mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", (size, size), (20 * c, 10 * i, 99)).save(folder / f"{i}.png")
    return root


def test_classes_from_the_folders_and_fewer_folders_than_declared(tmp_path):
    data = cifar_like_folders(tmp_path / "data", ["a", "b", "c"])
    counted = write_spec(tmp_path / "counted.toml", {**CIFAR10_FIELDS, "folder": "mine", "classes": "from the folders"})
    assert get_spec(str(counted), data).num_classes == 3
    with pytest.raises(PatchDropError, match="counts the class folders of the data; give the number"):
        get_spec(str(counted))
    declared = write_spec(tmp_path / "declared.toml", {**CIFAR10_FIELDS, "folder": "mine", "classes": 4})
    proc = subprocess.run([sys.executable, "classifier_training.py", "--model", str(declared), "--data_dir",
                           str(data), "--cv_dir", str(tmp_path / "cv"), "--num_workers", "0", "--max_epochs", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.strip() == (f"error: {data / 'mine' / 'train'} has 3 class folders but my_cifar10 declares 4 "
                                   f"classes ({declared})")


def test_an_image_of_another_size_is_refused_where_the_augmentation_cannot_resize(tmp_path):
    data = cifar_like_folders(tmp_path / "data", ["a", "b"], size=32)
    Image.new("RGB", (40, 40)).save(data / "mine" / "test" / "b" / "big.png")
    cifar = get_spec(str(write_spec(tmp_path / "c.toml", {**CIFAR10_FIELDS, "folder": "mine", "classes": 2})))
    _, test = build_datasets(cifar, data)
    with pytest.raises(PatchDropError, match=r"big.png is 40x40 pixels, expected 32x32"):
        [test[i] for i in range(len(test))]
    resizing = get_spec(str(write_spec(tmp_path / "r.toml", {**CIFAR10_FIELDS, "folder": "mine", "classes": 2,
                                                              "augmentation": "fmow"})))
    _, test = build_datasets(resizing, data)
    assert {test[i][0].shape for i in range(len(test))} == {(3, 32, 32)}


def test_a_checkpoint_refuses_a_spec_changed_since(tmp_path):
    spec_file = write_spec(tmp_path / "mine.toml", CIFAR10_FIELDS)
    run(classifier_training, "--model", spec_file, "--cv_dir", tmp_path / "hr", *FAKE)
    saved = ckpt(tmp_path / "hr" / "ckpt_last.pt")
    assert saved["model"] == "my_cifar10" and saved["spec"] == spec_record(get_spec(str(spec_file)))
    write_spec(spec_file, {**CIFAR10_FIELDS, "grid": 8})
    with pytest.raises(PatchDropError, match=r"hr/ckpt_last.pt: made with grid = 4, but --model .*mine.toml says "
                                             r"grid = 8; use the spec the run was made with"):
        run(pretrain, "--model", spec_file, "--cv_dir", tmp_path / "pt", "--ckpt_hr_cl", tmp_path / "hr", *FAKE)
    with pytest.raises(PatchDropError, match="made with grid = 4, but --model .*mine.toml says grid = 8"):
        run(classifier_training, "--cv_dir", tmp_path / "hr", "--resume", "--max_epochs", 2)
    # evaluate.py needs no spec file: the checkpoint's own spec rebuilds the networks.
    spec_file.unlink()
    report = run(evaluate, "--load", tmp_path / "hr", "--fake_data", "--test_samples", 16, "--num_workers", 0,
                 "--out", tmp_path / "eval")
    assert report["model"] == "my_cifar10" and report["test_images"] == 16


@pytest.mark.slow
def test_a_spec_file_of_the_cifar10_folders_trains_exactly_as_r32_c10(tmp_path, cifar10_dir):
    """The five stage commands, seeded, on the same real folders: metrics.jsonl equal line for line
    (without the wall times and rates, which differ between any two runs)."""
    spec_file = write_spec(tmp_path / "my_cifar10.toml", CIFAR10_FIELDS)
    data = ["--data_dir", cifar10_dir, "--max_epochs", 2, "--test_interval", 1, "--num_workers", 0,
            "--no_download", "--device", "cpu", "--batch_size", 64, "--train_samples", 128, "--test_samples", 64]
    chain(tmp_path / "builtin", "R32_C10", data)
    chain(tmp_path / "file", str(spec_file), data)
    for stage in ("hr", "lr", "pt", "ft", "ft2"):
        builtin, from_file = timing_free(tmp_path / "builtin" / stage), timing_free(tmp_path / "file" / stage)
        assert len(builtin) == 2 and builtin == from_file, stage
    assert ckpt(tmp_path / "file" / "ft2" / "ckpt_last.pt")["model"] == "my_cifar10"


def upscaled_subset(root: Path, classes, per_split: dict[str, int], size: int) -> Path:
    """A 5-class dataset no built-in model covers: CIFAR-10 images of the shipped sample, upscaled."""
    for split, count in per_split.items():
        for name in classes:
            folder = root / "cifar5_64" / split / name
            folder.mkdir(parents=True)
            for source in sorted((SAMPLE / "CIFAR10" / split / name).glob("*.jpg"))[:count]:
                with Image.open(source) as image:
                    image.convert("RGB").resize((size, size), Image.BICUBIC).save(folder / f"{source.stem}.png")
    return root


@pytest.mark.slow
def test_a_spec_no_built_in_model_covers_runs_every_stage_evaluate_and_visualize(tmp_path, capsys):
    """64-px images of 5 CIFAR-10 classes, an 8 x 8 grid of 8-px patches, a 16-px LR image; its
    normalization measured by scripts/spec_stats.py."""
    data = upscaled_subset(tmp_path / "data", CIFAR10_CLASSES[:5], {"train": 20, "test": 10}, 64)
    fields = {**CIFAR10_FIELDS, "name": "cifar5_64", "folder": "cifar5_64", "classes": "from the folders",
              "hr_size": 64, "grid": 8, "lr_size": 16, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    spec_file = write_spec(tmp_path / "cifar5_64.toml", fields)
    stats = subprocess.run([sys.executable, "scripts/spec_stats.py", "--model", str(spec_file), "--data_dir",
                            str(data)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert stats.returncode == 0, stats.stderr
    measured = dict(line.split(" = ") for line in stats.stdout.splitlines() if " = " in line)
    fields["mean"], fields["std"] = (json.loads(measured[key]) for key in ("mean", "std"))
    assert all(0.3 < m < 0.6 for m in fields["mean"]) and all(0.15 < s < 0.35 for s in fields["std"])
    write_spec(spec_file, fields)

    args = ["--data_dir", data, "--max_epochs", 1, "--num_workers", 0, "--device", "cpu", "--batch_size", 32]
    cv = tmp_path / "cv"
    chain(cv, str(spec_file), args, sizes=(64, 16))
    final = ckpt(cv / "ft2" / "ckpt_last.pt")
    assert final["spec"]["grid"] == 8 and final["spec"]["classes"] == 5
    assert final["agent"]["fc.weight"].shape[0] == 64 and final["resnet_hr"]["fc.weight"].shape[0] == 5
    metrics = [json.loads(line) for line in (cv / "ft" / "metrics.jsonl").read_text().splitlines()]
    assert 0 <= metrics[-1]["test_sparsity"] <= 64 and metrics[-1]["test_images"] == 50

    eval_args = ["--data_dir", data, "--num_workers", 0, "--device", "cpu", "--out", tmp_path / "eval"]
    report = run(evaluate, "--load", cv / "ft", "--ckpt_lr_cl", cv / "lr", "--baselines", "--budgets", 8, 32,
                 *eval_args)
    assert report["model"] == "cifar5_64" and report["test_images"] == 50
    assert report["settings"]["center k=32"]["sparsity"] == 32 and report["settings"]["full_hr"]["sparsity"] == 64
    assert spec_of_checkpoint(ckpt(cv / "ft" / "ckpt_last.pt")).num_patches == 64
    figure = run(visualize, "--load", cv / "ft2", "--num_images", 4, *eval_args)
    assert Path(figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert torch.load(cv / "pt" / "ckpt_last.pt", weights_only=True)["args"]["model"] == str(spec_file)
