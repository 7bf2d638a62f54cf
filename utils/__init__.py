"""Code shared by the PatchDrop scripts: one module per concept.

spec        dataset specs (TOML files: layout, classes, sizes, grid, architectures, normalization,
            augmentation, per-stage presets); the four paper models are specs/*.toml
data        datasets by layout, transforms by augmentation family, loaders
gpu_data    --gpu_data: a CIFAR split held, augmented and normalized on the device
policy      policy, mask and reward functions (pure, batched tensor code)
accel       device and dtype: device choice, backends, seeds, --amp, --channels_last, --compile,
            --parallel, DDP wrapping
distributed torchrun: process group, ranks, metrics gathered over ranks
checkpoint  the one checkpoint schema: atomic save, safe and validated load
weights     where each stage's networks start from: earlier stages' checkpoints, --pretrained
run         a stage's run directory: lock, metrics, checkpoints each epoch, random state, resume
schedule    the learning rate of each epoch, from the flags
metrics     per-epoch statistics, console lines, metrics.jsonl and TensorBoard
evaluation  settings (policy, budgets, baselines) scored in one pass, paired comparisons; FLOPs
stats       accuracy intervals, paired bootstrap, McNemar's exact test
cli         the command line: flags, defaults, checks, and the stage entry (``run_cli``)
fmow        fMoW categories and the context-crop rule (the command is scripts/prepare_fmow.py)
files       crash-safe writes (temporary file, flush, rename)
errors      PatchDropError, the error that ends a run with a short message

Values flow one way: a script's ``main`` resolves its flags (``cli.resolve_defaults``) and hands plain
values to the other modules; only ``cli`` reads the argparse Namespace. Apart from ``cli.run_cli``
(the scripts' entry point, which turns errors into one line), nothing in utils/ parses the command
line or prints (but for its progress lines): it returns values, notes for the user as plain sentences,
and raises PatchDropError.
"""
