"""The trained networks shipped in results/: intact (SHA256SUMS), loadable as they are by evaluate.py,
and reproducing the README's numbers on the CIFAR-10 test split."""
import hashlib
import json
from pathlib import Path

import pytest

import evaluate
from tests.test_stages import run

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results" / "R32_C10_cpu_full"
CHECKPOINTS = RESULTS / "checkpoints"


def test_shipped_checkpoints_match_their_sums():
    lines = (CHECKPOINTS / "SHA256SUMS").read_text().splitlines()
    assert len(lines) == 7
    for line in lines:
        digest, name = line.split("  ")
        assert hashlib.sha256((CHECKPOINTS / name).read_bytes()).hexdigest() == digest, name
    assert sum((CHECKPOINTS / line.split("  ")[1]).stat().st_size for line in lines) <= 17 * 2**20


# The shipped networks on the 1,000 test images of the embedded sample (data/cifar10_sample): the README's
# quick start prints these (measured with evaluate.py on the CPU, float32).
ON_THE_SAMPLE = {"ft": (0.8470, 11.962), "ft_p2": (0.8400, 10.549), "ft_p0.5": (0.7710, 6.333), "hr": (0.8580, 16)}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ON_THE_SAMPLE))
def test_shipped_networks_on_the_embedded_sample(name, tmp_path):
    report = run(evaluate, "--load", CHECKPOINTS / name, "--data_dir", ROOT / "data" / "cifar10_sample",
                 "--device", "cpu", "--num_workers", 0, "--speed_batches", 1, "--out", tmp_path)
    accuracy, sparsity = ON_THE_SAMPLE[name]
    assert report["test_images"] == 1000
    assert report["accuracy"] == pytest.approx(accuracy, abs=5e-4)
    assert report["sparsity"] == pytest.approx(sparsity, abs=5e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ft_p0.5"])
def test_shipped_finetuned_policy_reproduces_its_readme_row(name, cifar10_full_test):
    """evaluate.py on the shipped weights-only checkpoint gives the accuracy and S of the run's own
    evaluation (results/.../eval/<name>.json, the numbers of the README's table) to 0.001: the
    headline row on all 10,000 test images (17 s); every shipped network is pinned on the sample above."""
    expected = json.loads((RESULTS / "eval" / f"{name}.json").read_text())
    report = run(evaluate, "--model", "R32_C10", "--load", CHECKPOINTS / name, "--data_dir", cifar10_full_test,
                 "--device", "cpu", "--num_workers", 0, "--speed_batches", 1, "--out", cifar10_full_test / "eval")
    assert report["test_images"] == 10_000 and report["epoch"] == expected["epoch"]
    assert report["accuracy"] == pytest.approx(expected["accuracy"], abs=1e-3)
    assert report["sparsity"] == pytest.approx(expected["sparsity"], abs=1e-3)


def test_shipped_records_name_no_path_of_the_machine_that_made_them():
    """Evaluation JSONs, args, logs and the checkpoints' args name paths relative to the repository."""
    import re
    import subprocess

    import torch

    absolute = re.compile(r'["\s=](/(?:work|tmp|root|home|scratch|opt|mnt|Users)/)')
    files = subprocess.run(["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    assert files
    for name in files:
        path = ROOT / name
        if path.suffix == ".pt":
            args = torch.load(path, weights_only=True)["args"]
            text = json.dumps(args)
        elif path.suffix in (".json", ".jsonl", ".log", ".md", ".tsv", ".csv"):
            text = path.read_text()
        else:
            continue
        assert not absolute.search(text), f"{name}: {absolute.search(text).group(1)}"


def test_portable_paths_rule():
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    from portable_paths import portable

    roots = {"/scratch/runs/R32": "cv/R32"}
    text = ('{"cv_dir": "/scratch/runs/R32/ft", "data_dir": "/data/cifar/", "python": "/opt/venv/bin/python", '
            f'"here": "{ROOT}/results/x.json", "url": "https://arxiv.org/abs/2003.00425", "rate": "12 img/s 3/4"}}')
    assert json.loads(portable(text, roots)) == {
        "cv_dir": "cv/R32/ft", "data_dir": "cifar/", "python": "python", "here": "results/x.json",
        "url": "https://arxiv.org/abs/2003.00425", "rate": "12 img/s 3/4"}
