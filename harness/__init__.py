"""The machinery beside the method: what keeps a training run alive for days and talks to other formats.

    run.py            the helpers train.py's loop calls: when to sample, validate, save; doing it (TrainingRun)
    step_guard.py     the NaN/Inf watch inside a training step (ON_NAN), without reading the device mid-step
    checkpoint.py     the checkpoint schema, atomic saves, loading generators (load_generator), legacy files
    weights.py        reading weight files without running code, checking their tensors
    configurator.py   config.py < PRESET < --KEY=value, validated
    data_checks.py    bad files, pairing, batchable shapes; `python -m harness.data_checks FOLDER`
    loading.py        the training DataLoader: NUM_WORKERS=auto, the in-memory image cache (CACHE_IMAGES)
    device_data.py    the training set resident where the step runs, batches by one gather (DATA_ON_DEVICE)
    cuda_graph.py     the whole training step captured as one CUDA graph (CUDA_GRAPH), or the eager step
    errors.py         every error a user sees, and its exit code (2 = the command, 1 = at run time)
    signals.py        Ctrl-C / SIGTERM: finish the step, save, print the resume command; the ranks agree on it
    distributed.py    torchrun / DDP setup and agreement between ranks
    run_log.py        log.csv, TensorBoard, curves.png, sample grids
    metrics.py        L1, PSNR, SSIM and the own/other-target ratio
    fcn_score.py      the paper's FCN-score (§4.2) with a segmenter trained here, per dataset
    inference.py      loading a generator for predict.py, evaluate.py and demo.py; fitting any image size
    gpu_check.py      `python bench.py --gpu-check`: the CUDA tests, a facades run and bench.py's grid, one table
    official_timing.py  the official code's training step timed beside ours (--gpu-check --official PATH)
    official_format.py, onnx_export.py, synthetic_data.py, atomic.py
"""
