"""Device details a CPU can show with CUDA's functions replaced: which GPU a run uses, the random state
saved and restored for the run's GPU only, cuDNN settings, --amp on GPUs without native bfloat16, the
--gpu_data memory format, DataLoader workers, and refusals that come before anything is loaded or
deleted."""

import pytest
import torch

import classifier_training
from tests.test_stages import run
from utils import accel, data, distributed
from utils import run as run_dir
from utils.accel import Accel
from utils.cli import check_args
from utils.errors import PatchDropError
from utils.gpu_data import DeviceLoader
from utils.spec import SPECS

CUDA1 = torch.device("cuda", 1)


@pytest.fixture
def fake_gpus(monkeypatch):
    """Two pretend GPUs: CUDA functions answer without a driver and record what was asked of them."""
    calls = {"set_device": [], "set_rng_state": [], "get_rng_state": []}
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "device_count", lambda: 2)
    monkeypatch.setattr(cuda, "current_device", lambda: 0)
    monkeypatch.setattr(cuda, "set_device", lambda d: calls["set_device"].append(torch.device(d)))
    monkeypatch.setattr(cuda, "get_rng_state",
                        lambda d: calls["get_rng_state"].append(d) or torch.ones(8, dtype=torch.uint8))
    monkeypatch.setattr(cuda, "set_rng_state", lambda state, d: calls["set_rng_state"].append((state, d)))
    monkeypatch.setattr(cuda, "get_device_capability", lambda d=None: (7, 0))
    monkeypatch.setattr(cuda, "get_device_name", lambda d=None: "Tesla V100")
    return calls


def test_device_cuda_n_becomes_the_current_device(fake_gpus):
    assert accel.select_device("cuda:1") == CUDA1
    assert accel.select_device("cuda") == torch.device("cuda", 0)  # indexed: the current device
    assert fake_gpus["set_device"] == [CUDA1, torch.device("cuda", 0)]
    with pytest.raises(PatchDropError, match="there are 2 GPUs"):
        accel.select_device("cuda:2")


def test_only_the_run_devices_random_state_is_saved_and_restored(fake_gpus):
    state = run_dir.capture_rng(None, CUDA1)
    assert fake_gpus["get_rng_state"] == [CUDA1] and state["cuda"].shape == (8,)
    run_dir.restore_rng(state, None, CUDA1)
    assert [d for _, d in fake_gpus["set_rng_state"]] == [CUDA1]
    # A checkpoint of earlier code held the states of all 8 GPUs of its machine: one GPU resumes it.
    run_dir.restore_rng({**state, "cuda": [torch.zeros(8, dtype=torch.uint8)] * 8}, None, torch.device("cuda", 0))
    assert len(fake_gpus["set_rng_state"]) == 2
    # A CPU run neither saves nor sets a CUDA state.
    assert run_dir.capture_rng(None, torch.device("cpu"))["cuda"] is None
    run_dir.restore_rng(state, None, torch.device("cpu"))
    assert len(fake_gpus["set_rng_state"]) == 2


def test_cudnn_benchmark_and_tf32_on_the_gpu():
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32)
    try:
        accel.configure_backends(torch.device("cuda", 0))
        assert torch.backends.cudnn.benchmark and torch.backends.cudnn.allow_tf32
        accel.configure_backends(torch.device("cuda", 0), tf32=False)  # --no_tf32
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = saved


def test_amp_on_a_gpu_without_native_bf16_is_a_note(fake_gpus):
    accel = Accel(torch.device("cuda", 0), amp=True)
    assert not accel.amp
    assert accel.notes == ["--amp ignored: Tesla V100 (compute capability 7.0) has no native bfloat16 "
                           "and would emulate it, slower than float32; running float32"]


@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("train", [True, False])
def test_gpu_data_batches_come_in_the_models_memory_format(memory_format, train):
    loader = DeviceLoader(torch.randint(255, (20, 3, 32, 32), dtype=torch.uint8), torch.arange(20),
                          SPECS["R32_C10"], 8, train=train, device=torch.device("cpu"), seed=0,
                          memory_format=memory_format)
    for images, _ in loader:
        assert images.is_contiguous(memory_format=memory_format)


def test_default_workers_follow_the_cpus(monkeypatch):
    monkeypatch.setattr(data.os, "sched_getaffinity", lambda pid: set(range(16)))
    assert data.default_num_workers(SPECS["R32_C10"]) == 4
    assert data.default_num_workers(SPECS["R50_ImgNet"]) == 15
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four processes share the 16 CPUs
    assert data.default_num_workers(SPECS["R50_ImgNet"]) == 3
    assert data.default_num_workers(SPECS["R32_C10"]) == 4


def test_each_rank_seeds_its_own_loader_workers(monkeypatch):
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    loader = data.build_loader(list(range(8)), 4, train=True, num_workers=0, device=torch.device("cpu"),
                               seed=10)
    assert loader.generator.initial_seed() == 11


# --- refused before anything is loaded or deleted ------------------------------------------------------

def args_for(*argv):
    args = classifier_training.get_args_parser().parse_args([str(a) for a in argv])
    args.model, args.lr, args.mode, args.num_workers = args.model or "R32_C10", 0.1, "hr", 0
    return args


@pytest.mark.parametrize("argv,world,message", [
    (["--compile", "--parallel"], 1, "--compile with --parallel is not supported"),
    (["--test_samples", 1], 2, "--test_samples 1 is fewer than the 2 processes"),
    (["--batch_size", 6], 4, "--batch_size 6 is the total over 4 processes"),
    (["--gpu_data", "--model", "R50_ImgNet"], 1, "--gpu_data holds a whole split in device memory and augments it as CIFAR"),
])
def test_flags_that_cannot_work_are_refused_by_check_args(argv, world, message):
    args = args_for("--batch_size", 128, *argv)
    with pytest.raises(PatchDropError, match=message):
        check_args(args, SPECS[args.model], "classifier_hr", world)


def test_gpu_data_on_a_224px_dataset_is_refused_before_overwrite_deletes(tmp_path):
    (tmp_path / "ckpt_last.pt").write_bytes(b"the previous run")
    with pytest.raises(PatchDropError, match="--gpu_data holds a whole split in device memory and augments it as CIFAR"):
        run(classifier_training, "--model", "R50_ImgNet", "--gpu_data", "--overwrite", "--cv_dir", tmp_path,
            "--data_dir", tmp_path / "no_such_folder", "--device", "cpu")
    assert (tmp_path / "ckpt_last.pt").read_bytes() == b"the previous run"


def test_no_tf32_is_a_flag_of_every_script():
    import evaluate
    import finetune
    import finetune2stream
    import pretrain
    import visualize
    for script in (classifier_training, pretrain, finetune, finetune2stream):
        assert script.get_args_parser().parse_args(["--no_tf32"]).no_tf32
    for script in (evaluate, visualize):
        assert script.get_args_parser().parse_args(["--load", "x", "--no_tf32"]).no_tf32


# --- torchrun: which GPU a process takes, downloads, --sync_bn, --parallel -------------------------------

@pytest.mark.parametrize("device,local,count,expected", [
    ("cuda", 1, 2, "cuda:1"), ("auto", 0, 2, "cuda:0"),
    ("cuda", 3, 1, "cuda:0"),  # CUDA_VISIBLE_DEVICES gives each process its own GPU
    ("cpu", 1, 2, "cpu"),
])
def test_each_torchrun_process_takes_the_gpu_of_its_local_rank(fake_gpus, monkeypatch, device, local, count,
                                                              expected):
    monkeypatch.setenv("LOCAL_RANK", str(local))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    assert distributed.rank_device(device) == torch.device(expected)


@pytest.mark.parametrize("device,local,gpus,message", [
    ("cuda", 3, 2, "torchrun started 4 processes on this machine but 2 GPUs are visible; use --nproc_per_node 2"),
    ("cuda:1", 0, 2, "--device cuda:1 under torchrun: each process takes the GPU of its local rank"),
    ("cuda", 0, None, "--device cuda: CUDA is not available here; use --device cpu"),
])
def test_torchrun_device_choices_that_cannot_work_are_one_line(fake_gpus, monkeypatch, device, local, gpus,
                                                               message):
    monkeypatch.setenv("LOCAL_RANK", str(local))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    if gpus is None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(PatchDropError, match=message):
        distributed.rank_device(device)


@pytest.mark.parametrize("local", [0, 1])
def test_local_rank_0_downloads_before_the_others(monkeypatch, local):
    events = []
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", str(local))
    monkeypatch.setattr(distributed.dist, "barrier", lambda: events.append("barrier"))
    with distributed.local_main_first():
        events.append("download")
    assert events == (["download", "barrier"] if local == 0 else ["barrier", "download"])


def test_parallel_uses_the_runs_gpu_first_and_refuses_amp_over_several(fake_gpus):
    assert Accel(CUDA1, parallel=True).parallel_devices() == [1, 0]
    with pytest.raises(PatchDropError, match="--amp with --parallel over several GPUs is not supported"):
        Accel(CUDA1, parallel=True, amp=True)
    Accel(torch.device("cpu"), parallel=True, amp=True)  # no GPU: nothing to split over


def test_sync_bn_is_refused_on_a_cpu_group_and_keeps_the_checkpoint_keys(monkeypatch):
    from models import build_model

    assert "no effect in a single process" in Accel(torch.device("cpu"), sync_bn=True).notes[0]
    monkeypatch.setattr(distributed, "is_distributed", lambda: True)
    with pytest.raises(PatchDropError, match="--sync_bn needs GPUs"):
        Accel(torch.device("cpu"), sync_bn=True)
    plain = build_model("resnet32_cifar", 10)
    synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(build_model("resnet32_cifar", 10))
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in synced.modules())
    plain.load_state_dict(synced.state_dict())  # a --sync_bn checkpoint loads into the plain network


def test_compile_does_not_recompile_for_the_last_smaller_batch(monkeypatch):
    """Recompiles are dynamo's decision; the eager backend keeps inductor's code generation (tens of
    seconds on 2 cores, compiled for real in tests/test_speed.py) out of the test."""
    import functools

    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    torch._dynamo.reset()
    net = Accel(torch.device("cpu"), compile=True).prepare(
        torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(), torch.nn.LazyLinear(2)), trainable=True)
    net(torch.randn(8, 3, 6, 6))  # materialize the lazy layer
    torch._dynamo.reset()
    counters.clear()
    for batch in (8, 8, 5, 8, 3):
        net(torch.randn(batch, 3, 6, 6))
    assert counters["stats"]["unique_graphs"] == 1
