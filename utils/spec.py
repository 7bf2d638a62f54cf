"""Dataset specs: everything that depends on ``--model``, as data.

A spec is a small TOML file (specs/README.md documents every field): the dataset's layout and folder,
its classes, the HR side, the patch grid and the LR side, the classifier and policy architectures, the
normalization, the augmentation family and the preset of the paper's per-stage defaults it starts from.
The four models of the paper are four such files shipped in specs/ (R32_C10, R32_C100, R50_ImgNet,
R34_fMoW); ``--model`` takes one of their names or the path of a spec file of your own data. Nothing
else in the code parses the model name or compares it with a dataset: data layouts and augmentation
families are looked up by name (utils/data.py).

TOML rather than JSON: a spec is written by hand, and TOML allows the comments that say why a value is
what it is; Python reads it with its standard library (tomllib, Python 3.11; tomli before).

Each checkpoint records its spec (``spec_record``), so later stages, evaluate.py and visualize.py rebuild
it from the checkpoint, and a spec file changed since (another grid, other classes) is refused.
"""
from dataclasses import dataclass, field
from pathlib import Path

from models import ARCHITECTURES

from .errors import PatchDropError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

STAGES = ("classifier_hr", "classifier_lr", "pretrain", "finetune", "finetune2stream")
SPEC_DIR = Path(__file__).resolve().parents[1] / "specs"

# Normalization of method.md for CIFAR (per-channel mean and std of the training pixels).
CIFAR_MEAN = (125.3 / 255, 123.0 / 255, 113.9 / 255)
CIFAR_STD = (63.0 / 255, 62.1 / 255, 66.7 / 255)
# ImageNet and fMoW use the ImageNet statistics (those of torchvision's pretrained weights).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class StageDefaults:
    """Paper defaults of one stage; every one of them can be overridden on the command line."""

    lr: float
    batch_size: int
    max_epochs: int
    penalty: float | None = None  # reward of a wrong prediction (policy stages)
    alpha: float | None = None  # exploration bound of the Bernoulli policy (policy stages)
    optimizer: str | None = None  # "sgd" or "adam" (classifier stages; the policy stages use Adam)
    momentum: float = 0.9  # SGD, classifier stages
    weight_decay: float = 0.0
    lr_milestones: tuple[int, ...] = ()  # epochs at which the classifier LR is multiplied by 0.1


# CIFAR: method.md "Stages". The classifier schedule is the paper's (SGD, 300 epochs, LR x0.1 at 150 and
# 250). The authors' policy scripts ran until stopped (max_epochs 10000); our finite defaults are
# explained in the README ("Epoch budgets").
# DEVIATION: weight decay 5e-4 for the CIFAR classifiers, the standard ResNet-on-CIFAR recipe (He et al.
# 2016); the authors' --wd defaulted to 0 and their README passed none. --wd 0 gives their setting.
_CIFAR_WD = 5e-4
# ImageNet and fMoW (224 px): the authors' classifier script trained every dataset other than CIFAR with
# Adam at their README's lr 1e-3, batch 128, no weight decay (its --wd default), and a MultiStepLR whose
# only step (--epoch_step, default 10000) never came: a constant LR. The finetune stages default to
# penalty -20 (the authors' README).
PRESETS: dict[str, dict[str, StageDefaults]] = {
    "cifar": {
        "classifier_hr": StageDefaults(0.1, 128, 300, optimizer="sgd", weight_decay=_CIFAR_WD,
                                       lr_milestones=(150, 250)),
        "classifier_lr": StageDefaults(0.1, 128, 300, optimizer="sgd", weight_decay=_CIFAR_WD,
                                       lr_milestones=(150, 250)),
        "pretrain": StageDefaults(1e-4, 1024, 300, penalty=-0.5, alpha=0.8),
        "finetune": StageDefaults(1e-4, 128, 200, penalty=-10.0, alpha=0.8),
        "finetune2stream": StageDefaults(1e-4, 128, 200, penalty=-10.0, alpha=0.8),
    },
    "imagenet": {
        "classifier_hr": StageDefaults(1e-3, 128, 300, optimizer="adam"),
        "classifier_lr": StageDefaults(1e-3, 128, 300, optimizer="adam"),
        "pretrain": StageDefaults(1e-4, 1024, 300, penalty=-0.5, alpha=0.8),
        "finetune": StageDefaults(1e-4, 128, 200, penalty=-20.0, alpha=0.8),
        "finetune2stream": StageDefaults(1e-4, 128, 200, penalty=-20.0, alpha=0.8),
    },
}
LAYOUTS = ("image_folder", "csv")  # utils/data.py reads them
AUGMENTATIONS = ("cifar", "imagenet", "fmow")  # utils/data.py builds them
DOWNLOADS = ("CIFAR10", "CIFAR100")  # torchvision datasets an image-folder spec may fall back to
FROM_FOLDERS = "from the folders"

# The fields of a spec file: required ones, then optional ones with their defaults.
REQUIRED = ("name", "layout", "classes", "hr_size", "grid", "lr_size", "classifier", "policy", "mean", "std",
            "augmentation", "preset")
OPTIONAL = {"folder": None, "download": None, "hint": None}


@dataclass(frozen=True)
class ModelSpec:
    """One dataset and its networks, with the field names of the spec file (see specs/README.md)."""

    name: str
    layout: str  # "image_folder" or "csv"
    folder: str  # the dataset's folder under --data_dir
    num_classes: int
    hr_size: int  # side of the high-resolution image
    grid: int  # patches a side: P = grid * grid patches of hr_size // grid pixels
    lr_size: int  # side of the low-resolution image seen by the policy and the LR classifier
    classifier_arch: str  # key of models.ARCHITECTURES, for the HR and the LR classifier
    policy_arch: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    augmentation: str  # "cifar", "imagenet" or "fmow"
    preset: str  # "cifar" or "imagenet": the per-stage defaults
    download: str | None = None  # torchvision dataset read (and downloaded) when the folder is missing
    hint: str | None = None  # how to make the data, for the message when it is missing
    source: str = field(default="", compare=False)  # the file it was read from, for messages

    @property
    def patch_size(self) -> int:
        return self.hr_size // self.grid

    @property
    def num_patches(self) -> int:
        return self.grid ** 2

    @property
    def stages(self) -> dict[str, StageDefaults]:
        return PRESETS[self.preset]


def spec_record(spec: ModelSpec) -> dict:
    """The spec as its file would say it (plain types), as checkpoints record it."""
    return {"name": spec.name, "layout": spec.layout, "folder": spec.folder, "classes": spec.num_classes,
            "hr_size": spec.hr_size, "grid": spec.grid, "lr_size": spec.lr_size,
            "classifier": spec.classifier_arch, "policy": spec.policy_arch, "mean": list(spec.mean),
            "std": list(spec.std), "augmentation": spec.augmentation, "preset": spec.preset,
            "download": spec.download, "hint": spec.hint}


def _check_choice(where: str, field: str, value, choices) -> None:
    if value not in choices:
        raise PatchDropError(f"{where}: {field} = {value!r} is not one of {', '.join(map(repr, choices))}")


def spec_from_fields(fields: dict, where: str, classes_found: int | None = None, source: str = "") -> ModelSpec:
    """A ModelSpec from the fields of a spec file (or a checkpoint's record), every field checked; each
    problem is one line naming ``where`` and the field. ``classes_found``: the number of class folders,
    for ``classes = "from the folders"``."""
    unknown = sorted(set(fields) - set(REQUIRED) - set(OPTIONAL))
    if unknown:
        raise PatchDropError(f"{where}: unknown field {', '.join(unknown)}; the fields are "
                             f"{', '.join(REQUIRED + tuple(OPTIONAL))} (specs/README.md)")
    missing = [name for name in REQUIRED if name not in fields]
    if missing:
        raise PatchDropError(f"{where}: missing field {', '.join(missing)} (specs/README.md)")
    f = {**OPTIONAL, **fields}
    for name in ("hr_size", "grid", "lr_size"):
        if not isinstance(f[name], int) or isinstance(f[name], bool) or f[name] <= 0:
            raise PatchDropError(f"{where}: {name} must be a positive integer, got {f[name]!r}")
    if f["hr_size"] % f["grid"]:
        raise PatchDropError(f"{where}: the grid of {f['grid']} patches a side does not divide the HR side "
                             f"{f['hr_size']} into whole patches")
    if f["lr_size"] % f["grid"] or f["hr_size"] % f["lr_size"]:
        raise PatchDropError(f"{where}: lr_size {f['lr_size']} must be a whole multiple of the grid "
                             f"({f['grid']}) and divide hr_size {f['hr_size']}")
    for name in ("classifier", "policy"):
        _check_choice(where, name, f[name], tuple(ARCHITECTURES))
    _check_choice(where, "layout", f["layout"], LAYOUTS)
    _check_choice(where, "augmentation", f["augmentation"], AUGMENTATIONS)
    _check_choice(where, "preset", f["preset"], tuple(PRESETS))
    if f["download"] is not None:
        _check_choice(where, "download", f["download"], DOWNLOADS)
    for name in ("mean", "std"):
        values = f[name]
        if (not isinstance(values, list) or len(values) != 3
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            raise PatchDropError(f"{where}: {name} must be three numbers (one per RGB channel), got {values!r}")
    if any(v <= 0 for v in f["std"]):
        raise PatchDropError(f"{where}: std must be positive, got {f['std']}")
    classes = f["classes"]
    if classes == FROM_FOLDERS:
        if classes_found is None:
            raise PatchDropError(f"{where}: classes = {FROM_FOLDERS!r} counts the class folders of the data; "
                                 f"give the number when there is no data (--fake_data)")
        classes = classes_found
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 2:
        raise PatchDropError(f"{where}: classes must be a number of 2 or more, or {FROM_FOLDERS!r}, got "
                             f"{classes!r}")
    if not isinstance(f["name"], str) or not f["name"]:
        raise PatchDropError(f"{where}: name must be a non-empty string, got {f['name']!r}")
    return ModelSpec(name=f["name"], layout=f["layout"], folder=f["folder"] or f["name"], num_classes=classes,
                     hr_size=f["hr_size"], grid=f["grid"], lr_size=f["lr_size"], classifier_arch=f["classifier"],
                     policy_arch=f["policy"], mean=tuple(float(v) for v in f["mean"]),
                     std=tuple(float(v) for v in f["std"]), augmentation=f["augmentation"], preset=f["preset"],
                     download=f["download"], hint=f["hint"], source=source or where)


def read_spec_file(path: Path) -> dict:
    """The fields of a TOML spec file; a missing or malformed file is one line."""
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise PatchDropError(f"--model {path}: no such spec file") from None
    except tomllib.TOMLDecodeError as err:
        raise PatchDropError(f"{path}: not a valid TOML spec file ({err})") from None


def count_class_folders(fields: dict, data_dir: str | Path | None) -> int | None:
    """The class folders of an image-folder spec's training split, for ``classes = "from the folders"``
    (None when there is nothing to count)."""
    if fields.get("classes") != FROM_FOLDERS or data_dir is None:
        return None
    train = Path(data_dir) / (fields.get("folder") or fields.get("name", "")) / "train"
    return len([p for p in train.iterdir() if p.is_dir()]) if train.is_dir() else None


BUILT_IN = ("R32_C10", "R32_C100", "R50_ImgNet", "R34_fMoW")


def get_spec(model: str, data_dir: str | Path | None = None) -> ModelSpec:
    """The spec of ``--model``: a built-in name (its file in specs/), or the path of a spec file.
    ``data_dir`` lets ``classes = "from the folders"`` count them."""
    if model in BUILT_IN:
        path = SPEC_DIR / f"{model}.toml"
    elif model.endswith(".toml"):
        path = Path(model)
    else:
        raise PatchDropError(f"unknown --model {model!r}; choose one of: {', '.join(BUILT_IN)}, or give the "
                             f"path of a spec file (.toml, specs/README.md)")
    fields = read_spec_file(path)
    return spec_from_fields(fields, str(path), count_class_folders(fields, data_dir),
                            source=model if model in BUILT_IN else str(path))


def spec_of_checkpoint(ckpt: dict) -> ModelSpec:
    """The spec a checkpoint was made with: its record, or for a checkpoint written before specs were
    recorded, the built-in spec of its model name."""
    record = ckpt.get("spec")
    if record is None:
        return get_spec(ckpt["model"])
    return spec_from_fields(record, f"{ckpt.get('path', 'checkpoint')} (its recorded spec)")


def check_same_spec(ckpt: dict, spec: ModelSpec) -> None:
    """Refuse, naming the first differing field, a checkpoint made with another spec than ``spec`` (a
    spec file changed since, for instance)."""
    mine, theirs = spec_record(spec), spec_record(spec_of_checkpoint(ckpt))
    changed = [name for name in mine if mine[name] != theirs[name] and name != "hint"]
    if changed:
        name = changed[0]
        raise PatchDropError(f"{ckpt.get('path', 'checkpoint')}: made with {name} = {theirs[name]!r}, but "
                             f"--model {spec.source} says {name} = {mine[name]!r}; use the spec the run was made "
                             f"with, or start again from stage 1")


SPECS: dict[str, ModelSpec] = {name: get_spec(name) for name in BUILT_IN}
