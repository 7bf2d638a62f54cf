"""ImageNet and fMoW: the context-crop rule, the fMoW preprocessing command (scripts/prepare_fmow.py), the
CSV and image-folder loaders, --pretrained, and the four stages chained on small generated trees for both
224-px models."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms
from torchvision.models import resnet18, resnet34, resnet50

import classifier_training
from tests.test_stages import check_chain_outputs, chain, ckpt, run
from tests.trees import IMAGENET_CLASSES, make_fmow_tree, make_imagenet_tree
from utils import fmow
from utils.weights import load_pretrained
from utils.data import build_datasets, build_transform, load_rgb, read_image_csv
from utils.errors import PatchDropError
from utils.spec import IMAGENET_MEAN, IMAGENET_STD, SPECS

ROOT = Path(__file__).resolve().parents[1]
IMGNET, FMOW = SPECS["R50_ImgNet"], SPECS["R34_fMoW"]
PREPARE_FMOW = ROOT / "scripts" / "prepare_fmow.py"


# --- the context rule of the fMoW baseline ---------------------------------------------------------

@pytest.mark.parametrize("ratio,multiplier", [
    (0.0, 2.0), (0.099, 2.0), (0.1, 1.0), (0.199, 1.0), (0.2, 0.5), (0.299, 0.5), (0.3, 0.3),
    (0.399, 0.3), (0.4, 0.2), (0.499, 0.2), (0.5, 0.15), (1.0, 0.15),
])
def test_context_multiplier_bands(ratio, multiplier):
    assert fmow.context_multiplier(ratio) == multiplier


@pytest.mark.parametrize("box,size,expected", [
    # width 120/400 = 0.30 -> x0.3: pad int(18.0) = 18; height 60/300 = 0.20 -> x0.5: pad int(15.0) = 15
    ([100, 80, 120, 60], (400, 300), (82, 65, 238, 155)),
    # at the corner, 30/400 and 20/300 < 0.1 -> x2: pads 30 and 20, clipped at 0
    ([0, 0, 30, 20], (400, 300), (0, 0, 60, 40)),
    # 190/500 = 0.38 -> x0.3: pad int(28.5) = 28; 230/500 = 0.46 -> x0.2: pad 23; clipped at 500
    ([300, 260, 190, 230], (500, 500), (272, 237, 500, 500)),
    # 100/256 = 0.39 -> x0.3: pad 15; 90/256 = 0.35 -> x0.3: pad int(13.5) = 13
    ([60, 60, 100, 90], (256, 256), (45, 47, 175, 163)),
    ([5, 5, 2, 9], (400, 300), None),  # 2 pixels wide: skipped
    ([5, 5, 9, 1], (400, 300), None),
    ([600, 10, 20, 20], (400, 300), None),  # outside the image
])
def test_context_box_against_hand_computed_crops(box, size, expected):
    assert fmow.context_box(box, *size) == expected


def test_categories_are_the_official_62():
    assert len(fmow.CATEGORIES) == len(set(fmow.CATEGORIES)) == FMOW.num_classes == 62
    assert fmow.CATEGORIES[0] == "airport" and fmow.CATEGORIES[-1] == "zoo"
    assert fmow.LABELS["impoverished_settlement"] == 42 and "false_detection" not in fmow.LABELS


# --- the preprocessing command -----------------------------------------------------------------------

def load_prepare_fmow():
    """scripts/prepare_fmow.py as a module (scripts/ is no package), for calling its preprocess in process."""
    spec = importlib.util.spec_from_file_location("prepare_fmow", PREPARE_FMOW)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # so that its functions pickle, should a test use --workers > 1
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def fmow_data(tmp_path_factory):
    """The fMoW test tree preprocessed into <data_dir>/fMoW (by the command line, with 2 workers)."""
    root = tmp_path_factory.mktemp("fmow")
    src = make_fmow_tree(root / "src")
    proc = subprocess.run([sys.executable, PREPARE_FMOW, "--src", src, "--dst", root / "data" / "fMoW",
                           "--workers", "2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    return root, proc


def test_preprocessing_crops_boxes_and_writes_the_csv_files(fmow_data):
    root, proc = fmow_data
    assert proc.returncode == 0, proc.stderr
    dst = root / "data" / "fMoW"
    # Per split: 4 images with 6 boxes, of which one false_detection and one tiny box are left out.
    for split in ("train", "test"):
        lines = (dst / f"{split}.csv").read_text().splitlines()
        assert lines == ["label,location", f"0,{split}/airport/airport_0_0_0.jpg",
                         f"0,{split}/airport/airport_1_0_0.jpg", f"12,{split}/dam/dam_3_0_0.jpg",
                         f"61,{split}/zoo/zoo_2_0_0.jpg"]
    # Crops are saved at their cropped size (the hand-computed boxes above).
    sizes = {"airport_0_0_0": (156, 90), "airport_1_0_0": (60, 40), "zoo_2_0_0": (228, 263),
             "dam_3_0_0": (130, 116)}
    for name, size in sizes.items():
        category = name.rsplit("_", 3)[0]
        with Image.open(dst / "train" / category / f"{name}.jpg") as crop:
            assert crop.size == size
    # Each bad item is reported with its path, then counted; nothing else is lost.
    for path in ("dam_90_0_rgb.json: malformed metadata", "dam_91_0_rgb.jpg: missing image",
                 "volcano_0_0_rgb.json: unknown category folder 'volcano'"):
        assert path in proc.stderr
    assert "boxes left out: 2 false_detection, 2 of 2 px or less; skipped items: 3" in proc.stdout
    assert (dst / "train.csv").read_text().count("\n") == 5


def test_preprocessing_again_reuses_the_crops(fmow_data):
    root, _ = fmow_data
    dst = root / "data" / "fMoW"
    before = (dst / "train.csv").read_text()
    totals = load_prepare_fmow().preprocess(root / "src", dst, workers=1, progress=False)
    assert (totals["written"], totals["kept"]) == (0, 8) and (dst / "train.csv").read_text() == before


def test_preprocessing_without_fmow_layout_is_a_short_error(tmp_path):
    proc = subprocess.run([sys.executable, PREPARE_FMOW, "--src", tmp_path, "--dst", tmp_path / "out"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "no fMoW metadata found" in proc.stderr and "Traceback" not in proc.stderr


# --- loading -------------------------------------------------------------------------------------------

def test_fmow_csv_round_trip(fmow_data):
    root, _ = fmow_data
    train, test = build_datasets(FMOW, root / "data")
    assert (len(train), len(test)) == (4, 4)
    assert train.targets == [0, 0, 12, 61]
    x, y = test[3]
    assert x.shape == (3, 224, 224) and y == 61


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_read_image_csv_with_and_without_header(tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    absolute = tmp_path / "a.jpg"
    rows = read_image_csv(write_csv(tmp_path / "h.csv", f"label,location\n3,a.jpg\n61,{absolute}\n"), 62)
    assert rows == [(str(tmp_path / "a.jpg"), 3), (str(absolute), 61)]
    assert read_image_csv(write_csv(tmp_path / "n.csv", "3,a.jpg\n\n5, a.jpg\n"), 62) == \
        [(str(tmp_path / "a.jpg"), 3), (str(tmp_path / "a.jpg"), 5)]


@pytest.mark.parametrize("text,message", [
    ("label,location\n3\n", r"line 2: expected two columns 'label,location', got \['3'\]"),
    ("label,location\nthree,a.jpg\n", "line 2: the label 'three' is not an integer"),
    ("0,a.jpg\n62,a.jpg\n", r"line 2: label 62 is outside 0..61"),
    ("-1,a.jpg\n", r"line 1: label -1 is outside 0..61"),
    ("0,a.jpg\n0,missing.jpg\n", "line 2: image .*missing.jpg does not exist"),
    ("label,location\n", "lists no images"),
])
def test_malformed_csv_names_the_line(tmp_path, text, message):
    Image.new("RGB", (8, 8)).save(tmp_path / "a.jpg")
    with pytest.raises(PatchDropError, match=message):
        read_image_csv(write_csv(tmp_path / "bad.csv", text), 62)


def test_missing_fmow_csv_explains_the_preprocessing(tmp_path):
    with pytest.raises(PatchDropError, match="no train.csv or test.csv.*python scripts/prepare_fmow.py"):
        build_datasets(FMOW, tmp_path)
    with pytest.raises(PatchDropError, match=r"no ImageNet data under .*ImageNet/train/<class>"):
        build_datasets(IMGNET, tmp_path)


def test_imagenet_folders_any_colour_mode_becomes_rgb(tmp_path):
    make_imagenet_tree(tmp_path)
    modes = set()
    for path in sorted((tmp_path / "ImageNet" / "train").glob("*/*")):
        with Image.open(path) as image:
            modes.add(image.mode)
        assert load_rgb(path).mode == "RGB"
    assert modes == {"RGB", "L", "P", "CMYK", "RGBA"}
    train, test = build_datasets(IMGNET, tmp_path)
    assert (len(train), len(test)) == (12 + 997, 6 + 997) and train.classes[:3] == list(IMAGENET_CLASSES)
    for i in range(12):
        x, y = train[i]
        assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and y == i // 4


def test_corrupt_image_is_named(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(PatchDropError, match=f"cannot read image {bad}"):
        load_rgb(bad)


def test_imagenet_and_fmow_transforms():
    """ImageNet: Resize(256) + crop 224 (+ flip in training); fMoW: Resize(224) + crop 224, never a
    flip; both normalized with the ImageNet statistics. An image whose columns run from black to
    white shows whether a flip happened."""
    ramp = torch.linspace(0, 1, 448).expand(3, 224, 448)
    image = transforms.functional.to_pil_image(ramp)
    flipped = {}
    for spec in (IMGNET, FMOW):
        assert (spec.mean, spec.std) == (IMAGENET_MEAN, IMAGENET_STD)
        test = build_transform(spec, train=False)(image)
        assert test.shape == (3, 224, 224)
        torch.manual_seed(0)
        draws = [build_transform(spec, train=True)(image) for _ in range(20)]
        assert all(d.shape == (3, 224, 224) for d in draws)
        flipped[spec.name] = sum(bool(d[0, 0, 0] > d[0, 0, -1]) for d in draws)
    assert flipped["R34_fMoW"] == 0 and 0 < flipped["R50_ImgNet"] < 20
    # fMoW's Resize(224) keeps the 224-px side: the centre crop is the middle of the ramp, unscaled.
    centre = build_transform(FMOW, train=False)(image)[0, 0] * IMAGENET_STD[0] + IMAGENET_MEAN[0]
    assert torch.allclose(centre, ramp[0, 0, 112:336], atol=1 / 255 + 1e-6)


# --- --pretrained ------------------------------------------------------------------------------------

def test_pretrained_imagenet_weights_replace_the_final_layer(tmp_path):
    torch.manual_seed(1)
    source = resnet34(num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "resnet34.pth")
    from models import build_model

    net = build_model(FMOW.classifier_arch, FMOW.num_classes)
    note = load_pretrained(net, tmp_path / "resnet34.pth")
    assert "final layer 'fc' replaced (1000 -> 62 outputs" in note
    loaded, original = net.state_dict(), source.state_dict()
    assert all(torch.equal(loaded[k], original[k]) for k in original if not k.startswith("fc."))
    assert net.fc.weight.shape == (62, 512)
    # Same class count: the final layer is kept as well.
    imagenet = build_model(IMGNET.classifier_arch, IMGNET.num_classes)
    torch.save({"state_dict": resnet50(num_classes=1000).state_dict()}, tmp_path / "r50.pth")
    assert "replaced" not in load_pretrained(imagenet, tmp_path / "r50.pth")


def test_pretrained_mismatch_and_missing_file_are_short_errors(tmp_path):
    from models import build_model

    net = build_model(FMOW.classifier_arch, FMOW.num_classes)
    torch.save(resnet18().state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(PatchDropError, match=r"resnet18.pth: does not fit the ResNet.*missing: layer1.2"):
        load_pretrained(net, tmp_path / "resnet18.pth")
    with pytest.raises(PatchDropError, match="no such file"):
        load_pretrained(net, tmp_path / "nothing.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(PatchDropError, match="expected a state dict"):
        load_pretrained(net, tmp_path / "list.pth")


def test_classifier_training_starts_from_pretrained(tmp_path, fmow_data):
    root, _ = fmow_data
    torch.manual_seed(2)
    source = resnet34(num_classes=1000).state_dict()
    torch.save(source, tmp_path / "imagenet.pth")
    # With SGD at lr 1e-12 a step moves nothing visible: the checkpoint holds the loaded weights.
    run(classifier_training, "--model", "R34_fMoW", "--data_dir", root / "data", "--cv_dir", tmp_path / "hr",
        "--pretrained", tmp_path / "imagenet.pth", "--lr", 1e-12, "--max_epochs", 1, "--num_workers", 0)
    saved = ckpt(tmp_path / "hr" / "ckpt_last.pt")["state_dict"]
    assert torch.allclose(saved["conv1.weight"], source["conv1.weight"], atol=1e-9)
    assert saved["fc.weight"].shape == (62, 512)


# --- the four stages ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_chain_imagenet(tmp_path):
    data_dir = make_imagenet_tree(tmp_path / "data", per_class={"train": 2, "test": 1})
    data = ["--data_dir", data_dir, "--max_epochs", 1, "--num_workers", 0, "--train_samples", 12, "--test_samples", 6]
    out = chain(tmp_path / "cv", "R50_ImgNet", data, lr=1e-3, sizes=(224, 56), penalty=-20)
    check_chain_outputs(tmp_path / "cv", "R50_ImgNet", epochs=1)
    assert ckpt(tmp_path / "cv" / "ft" / "ckpt_last.pt")["args"]["penalty"] == -20
    assert 0 <= out["ft2"]["test_sparsity"] <= 16


@pytest.mark.slow
def test_chain_fmow_on_preprocessed_crops(tmp_path, fmow_data):
    root, _ = fmow_data
    data = ["--data_dir", root / "data", "--max_epochs", 1, "--num_workers", 0]
    chain(tmp_path, "R34_fMoW", data, lr=1e-3, sizes=(224, 56), penalty=-20)
    check_chain_outputs(tmp_path, "R34_fMoW", epochs=1)
    # finetune's defaults for fMoW: penalty -20 when not given on the command line
    assert SPECS["R34_fMoW"].stages["finetune"].penalty == -20
