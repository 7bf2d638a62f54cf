"""Code shared by the four PatchDrop stage scripts: one module per concept.

spec        the per-dataset table keyed by --model (sizes, classes, architectures, default settings)
data        datasets, transforms and loaders
policy      policy, mask and reward functions (pure, batched tensor code)
checkpoint  the one checkpoint schema: atomic save, safe and validated load
files       crash-safe writes (temporary file, flush, rename)
metrics     per-epoch statistics, console lines, metrics.jsonl and TensorBoard
accel       speed options: --amp, --channels_last, --compile, --parallel, DDP wrapping
distributed torchrun: process group, ranks, metrics gathered over ranks
gpu_data    --gpu_data: a CIFAR split held, augmented and normalized on the device
runtime     stage set-up (spec, defaults, checks, seeds, device), run directories
cli         the flags every stage script shares
fmow        the fMoW preprocessing command (python -m utils.fmow)
errors      PatchDropError, the error that ends a run with a short message

Apart from the ``python -m utils.fmow`` command and ``runtime.run_cli`` (the scripts' entry point),
nothing in utils/ parses the command line or prints: it returns values and raises PatchDropError.
"""
