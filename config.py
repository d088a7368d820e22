"""Training settings for pix2pix. Defaults are the paper's (arXiv 1611.07004, §3 and appendix 6.1-6.2).

Edit this file, or override any setting on the command line (each in full: docs/configuration.md):
    python train.py --PRESET=facades --TRAIN_DIR=data/facades/train --VAL_DIR=data/facades/val
    python train.py --BATCH_SIZE=4 --PRECISION=fp32
Values are parsed as Python literals (never evaluated as code) and must have the same type as the default.
Order of precedence: this file < PRESET < RECIPE < other command-line overrides.
"""

# --- data ---
TRAIN_DIR = "data/synthetic/train"  # side-by-side A|B images, or A/ + B/ folders paired by name (made if default)
VAL_DIR = "data/synthetic/val"  # held-out A|B images for sample grids and validation metrics
DIRECTION = "BtoA"  # "AtoB": left half is the input; "BtoA": right half is the input (facades labels->photo)
IN_CHANNELS = 3  # 3 = RGB input, 1 = grayscale input
OUT_CHANNELS = 3  # 3 = RGB output, 1 = grayscale output
LOAD_SIZE = 286  # paper §6.2 random jitter: resize to LOAD_SIZE ...
IMAGE_SIZE = 256  # ... then take a random IMAGE_SIZE crop (also the eval resolution)
JITTER = True  # resize+random crop; False = resize straight to IMAGE_SIZE (validation's geometry, crops centred)
PREPROCESS = "resize_and_crop"  # official --preprocess: resize_and_crop|crop|scale_width|scale_width_and_crop|none
MIRROR = True  # random horizontal flip, the same for input and target
NUM_WORKERS = "auto"  # DataLoader workers: "auto" = one per usable CPU core (at most 8), or a number (0 = none)
CACHE_IMAGES = False  # keep the decoded training set in memory (uint8): files decoded once; augmentation unchanged
DATA_ON_DEVICE = "auto"  # training set decoded once, kept on the device, batches cut there: "auto" (GPU), True, False
BAD_FILES = "error"  # unreadable/unsplittable images: "error" = stop before training and list them, "skip" = skip them

# --- model ---
GENERATOR = "unet"  # "unet" (paper; depth NUM_DOWNS), "resnet_6blocks" or "resnet_9blocks" (the official ResNet G)
GEN_BASE_CHANNELS = 64  # width of the generator's first layer (ngf)
NUM_DOWNS = 0  # U-Net depth; 0 = derive from IMAGE_SIZE (7 for 128, 8 for 256, 9 for 512)
NORM = "batch"  # "batch" (paper), "instance" or "none"
INIT = "normal"  # weight init: "normal" (paper: N(0, INIT_GAIN)), "xavier", "kaiming" or "orthogonal"
INIT_GAIN = 0.02  # std of "normal", gain of "xavier" and "orthogonal" (and batch norm's scale ~ N(1, INIT_GAIN))
DROPOUT = True  # dropout 0.5 in three decoder layers (paper's noise source; where: DROPOUT_PLACEMENT)
DROPOUT_PLACEMENT = "paper"  # "paper": first three decoder blocks; "official": the official code's (2-4 for unet_256)
DISC_BASE_CHANNELS = 64  # width of the discriminator's first layer (ndf)
DISC_N_LAYERS = 3  # PatchGAN size: 0 = 1x1 PixelGAN, 1 = 16x16, 3 = 70x70 (paper), 5 = 286x286
SYNC_BN = False  # with torchrun: share batch-norm statistics across processes (SyncBatchNorm)
D_SCALES = 1  # recipe: pix2pixHD's multi-scale D: 1 = the paper's one PatchGAN; 2-3 = one more per 2x avg-pooling
SPECTRAL_NORM = False  # recipe: spectral norm on every conv of D (as SPADE)

# --- optimisation ---
BATCH_SIZE = 1  # images per step per process (paper: 1)
LEARNING_RATE = 2e-4  # Adam learning rate for G and D
BETA1 = 0.5  # Adam beta1 (paper: 0.5)
BETA2 = 0.999  # Adam beta2
L1_LAMBDA = 100.0  # weight of the L1 term in G's loss (paper §3.1, lambda = 100)
GAN_LOSS = "bce"  # "bce" (paper: binary cross-entropy on logits), "lsgan" (least squares) or "hinge"
FEATURE_MATCHING = False  # recipe: pix2pixHD's L1 between D's features on real and generated pairs in G's loss
FEATURE_MATCHING_LAMBDA = 10.0  # its weight (pix2pixHD: 10)
LEARNING_RATE_D = "same"  # D's Adam learning rate: "same" = LEARNING_RATE, or a number (TTUR, as SPADE)
BETA1_D = "same"  # D's Adam beta1: "same" = BETA1, or a number
BETA2_D = "same"  # D's Adam beta2: "same" = BETA2, or a number
N_EPOCHS = 100  # epochs at constant learning rate
N_EPOCHS_DECAY = 100  # further epochs with the learning rate decayed linearly to zero
LR_POLICY = "linear"  # "linear" (paper, above), "step" (x0.1 every LR_DECAY_ITERS epochs), "plateau" or "cosine"
LR_DECAY_ITERS = 50  # LR_POLICY="step": epochs between the x0.1 steps (official --lr_decay_iters)
G_EMA = False  # recipe: also keep a moving average of G's weights; samples, validation and exports use it
G_EMA_HALF_LIFE = 0.0  # its half-life in images; 0 = stylegan2-ada's rule, 10,000 x global batch / 32
G_EMA_RAMPUP = 0.05  # early on, the half-life is at most this fraction of the images seen so far (0 = no ramp-up)
ON_NAN = "stop"  # a NaN/Inf loss: "stop" = stop without saving poisoned weights, "skip" = skip that step

# --- system ---
SEED = 42  # seeds python, numpy, torch, shuffling and augmentation
DEVICE = "auto"  # "auto" (cuda > mps > cpu), "cpu", "cuda", "cuda:1", "mps"
PRECISION = "auto"  # "auto" (bf16 on CUDA Ampere+ and AMX CPUs, fp16 on Volta/Turing, else fp32), "fp32" (IEEE, also
#                    on GPUs), "tf32" (TF32 convolutions, CUDA only), "bf16", "fp16": docs/precision.md
CHANNELS_LAST = "auto"  # NHWC memory layout: "auto" (on CUDA; on CPU from batch 4, where it beats NCHW), True, False
COMPILE = False  # torch.compile both networks (slow first epoch); "reduce-overhead": with CUDA graphs (small batches)
CUDA_GRAPH = False  # the whole training step as one CUDA graph, replayed (one GPU); a failed capture: eager
DETERMINISTIC = False  # deterministic kernels, no cuDNN autotuning: bit-exact resume on GPUs too (slower)
DIST_TIMEOUT_S = 600  # torchrun: a rank silent this long stops the whole job instead of hanging

# --- output ---
RUN_DIR = "runs/pix2pix"  # everything a run writes: log.csv, samples/, checkpoints/, generator.pt, TensorBoard
RESUME = "auto"  # "auto" = continue from RUN_DIR/checkpoints/last.pt if present, "never", or a checkpoint path
SAMPLE_EVERY = 1  # write an input|generated|target grid every N epochs (0 = never, the first epoch's too)
N_SAMPLES = 4  # fixed validation images shown in each sample grid
VAL_EVERY = 1  # compute validation L1/PSNR/SSIM every N epochs (0 = never)
VAL_MAX_IMAGES = 100  # validate on at most this many VAL_DIR images (0 = all of them)
EVAL_BUDGET = 0.1  # samples, validation and curves: at most this fraction of the time (spaced out if slower; 0 = off)
PIXEL_ACCURACY = False  # validation also reports RMSE and pixel accuracy (within 5/16 grey levels): maps' figures
FCN_SCORE = False  # validation also reports the FCN-score (paper §4.2, labels->photo data; trains a segmenter once)
FID = False  # validation also reports FID and KID (Inception-v3 features; needs INCEPTION_WEIGHTS, never downloaded)
INCEPTION_WEIGHTS = ""  # FID's pt_inception-2015-12-05-6726825d.pth; "" = torch's hub cache (docs/results.md)
BEST_BY = "l1"  # what picks best.pt: "l1" (validation L1, lower) or "fcn_class_iou" (with FCN_SCORE, higher)
TEST_MODE = "paper"  # generator at test time: "paper" (dropout on, batch statistics; paper §3.3) or "eval"
LOG_EVERY = 50  # TensorBoard scalars every N steps
CHECKPOINT_EVERY_MINUTES = 10.0  # refresh checkpoints/last.pt (and generator.pt) this often (0 = every epoch end)
CHECKPOINT_EVERY_STEPS = 0  # also refresh checkpoints/last.pt every N steps (0 = off)
SNAPSHOT_EVERY = 20  # keep checkpoints/epoch_NNNN.pt every N epochs (0 = never)
PRESET = ""  # one word applying a dataset's paper settings (see PRESETS below): facades, maps, cityscapes, ...
RECIPE = ""  # one word applying a set of the recipes above (see RECIPES below): paper, msd_fm, hinge_sn_ttur, combo

# Paper appendix 6.2, per dataset; epochs split half constant, half decay, as the official code's 200. night2day is
# day -> night in the paper; day is the right half of the standard files, hence BtoA (as the official docs say).
PRESETS = {
    "facades": dict(DIRECTION="BtoA", N_EPOCHS=100, N_EPOCHS_DECAY=100, BATCH_SIZE=1, JITTER=True, MIRROR=True),
    "maps": dict(DIRECTION="AtoB", N_EPOCHS=100, N_EPOCHS_DECAY=100, BATCH_SIZE=1, JITTER=True, MIRROR=True,
                 PIXEL_ACCURACY=True),
    "cityscapes": dict(DIRECTION="BtoA", N_EPOCHS=100, N_EPOCHS_DECAY=100, BATCH_SIZE=1, JITTER=True, MIRROR=True),
    "edges2shoes": dict(DIRECTION="AtoB", N_EPOCHS=8, N_EPOCHS_DECAY=7, BATCH_SIZE=4, JITTER=False, MIRROR=False),
    "edges2handbags": dict(DIRECTION="AtoB", N_EPOCHS=8, N_EPOCHS_DECAY=7, BATCH_SIZE=4, JITTER=False, MIRROR=False),
    "night2day": dict(DIRECTION="BtoA", N_EPOCHS=9, N_EPOCHS_DECAY=8, BATCH_SIZE=4, JITTER=True, MIRROR=True),
}

# Recipes beyond the paper, one word each (RECIPE=...), applied over PRESET; any --KEY=value still wins. None is
# proven better than the paper yet (docs/results.md): they are the arms of that comparison, and a RECIPE that turns
# on the winner waits for its evidence. G_EMA changes nothing in training, so add it to any of them.
msd_fm = dict(D_SCALES=2, FEATURE_MATCHING=True)  # pix2pixHD's D and its loss
hinge_sn_ttur = dict(GAN_LOSS="hinge", SPECTRAL_NORM=True, LEARNING_RATE=1e-4, LEARNING_RATE_D=4e-4,  # SPADE's
                     BETA1=0.0, BETA2=0.9, BETA1_D=0.0, BETA2_D=0.9)
RECIPES = {
    "paper": {},  # the paper's method, as the defaults
    "msd_fm": msd_fm,
    "hinge_sn_ttur": hinge_sn_ttur,
    "combo": msd_fm | hinge_sn_ttur,
}
