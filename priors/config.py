"""Where the pretrained weights come from and how the frozen networks run."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Config:
    """Pretrained weight sources (hub ids as the release names them) and memory options."""

    weights_dir: str = ""
    """Local folder holding the weights (one sub-folder per hub id); empty: the Hugging Face cache;
    ``@bundled``: the tiny priors that ship with geneman (``priors/bundled``, preset ``demo``)."""
    sd15: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    """SD 1.5 base: VAE, text encoder, tokenizer, scheduler (a copy under the old id runwayml/... is found too)."""
    geneman_repo: str = "wwt117/GeneMAN"
    """Hugging Face dataset holding the GeneMAN 2D prior UNet, the 3D prior and tet grids."""
    prior_2d_subfolder: str = "pretrained_models/geneman-prior2d"
    """Folder of the GeneMAN 2D prior UNet (diffusers format) inside ``geneman_repo``."""
    prior_3d_ckpt: str = "pretrained_models/geneman-prior3d/last.ckpt"
    """GeneMAN 3D prior checkpoint (LDM format, Zero-1-to-3 architecture) inside ``geneman_repo``."""
    prior_3d_yaml: str = "pretrained_models/geneman-prior3d/prior_3d.yaml"
    """LDM yaml of the 3D prior inside ``geneman_repo``."""
    prior_3d_diffusers: str = ""
    """Folder of a 3D prior already converted to diffusers format (used instead of the LDM files)."""
    trust_prior_3d_pickle: bool = False
    """Allow full unpickling of ``last.ckpt`` when it holds more than tensors: the command-line flag
    ``--trust-prior-3d-pickle`` of one invocation only (never read from a config file or a run folder)."""
    trust_weights: bool = False
    """Load TorchScript weights (Sapiens) whose sha256 is not a released file's: the command-line flag
    ``--trust-weights`` of one invocation only (never read from a config file or a run folder)."""
    normal_adapted: str = "xanderhuang/normal-adapted-sd1.5"
    """HumanNorm normal-adapted SD 1.5 (stage 2 guidance)."""
    depth_adapted: str = "xanderhuang/depth-adapted-sd1.5"
    """HumanNorm depth-adapted SD 1.5 (stage 2 guidance)."""
    normal_aligned: str = "xanderhuang/normal-aligned-sd1.5"
    """HumanNorm normal-aligned SD 1.5 (stage 4 SDEdit)."""
    controlnet_normal: str = "xanderhuang/controlnet-normal-sd1.5"
    """Normal ControlNet for SD 1.5 (stage 4 SDEdit)."""
    sapiens_normal: str = "facebook/sapiens-normal-2b-torchscript"
    """Sapiens normal estimator (TorchScript)."""
    sapiens_normal_file: str = "sapiens_2b_normal_render_people_epoch_70_torchscript.pt2"
    """TorchScript file of the Sapiens normal estimator inside ``sapiens_normal``, or the
    ``diffusion_pytorch_model.safetensors`` of a ``geneman prior train-normal`` output."""
    sapiens_depth: str = "facebook/sapiens-depth-2b-torchscript"
    """Sapiens depth estimator (TorchScript)."""
    sapiens_depth_file: str = "sapiens_2b_render_people_epoch_25_torchscript.pt2"
    """TorchScript file of the Sapiens depth estimator inside ``sapiens_depth``, or the
    ``diffusion_pytorch_model.safetensors`` of a ``geneman prior train-depth`` output."""
    lpips: str = "lpips"
    """Folder of the LPIPS VGG16 weights (``vgg16.safetensors``, ``vgg_lin.safetensors``) under
    ``weights_dir``, or an absolute folder; made once with ``priors.lpips.convert_lpips_weights``."""
    clip_eval: str = "openai/clip-vit-large-patch14"
    """CLIP (transformers format: ``config.json``, ``model.safetensors``) whose image embeddings give
    ``geneman eval``'s CLIP similarity; never loaded by ``geneman run`` (see ``priors.clip``)."""
    sapiens_optional: bool = False
    """Missing Sapiens weights disable the depth / normal losses with a warning instead of stopping."""
    cfg_variant: str = field(default="release", metadata={"choices": ("standard", "release")})
    """CFG form of the GeneMAN 2D prior's SDS: ``standard`` (u + s (c - u)) or ``release`` (c + s (c - u)).

    The release uses ``release`` there and the standard form for the 3D prior, the adapted guidance
    and SDEdit, which always use ``standard``."""
    weighting: str = field(default="sds", metadata={"choices": ("sds", "uniform", "fantasia3d")})
    """SDS weight w(t): ``sds`` (1 - alpha_bar), ``uniform`` (1) or ``fantasia3d``."""
    dtype: str = field(default="auto", metadata={"choices": ("auto", "fp32", "fp16", "bf16")})
    """Network precision: ``auto`` (fp16 on CUDA, fp32 on CPU), ``fp32``, ``fp16`` or ``bf16``."""
    attention: str = field(default="sdpa", metadata={"choices": ("sdpa", "xformers")})
    """Attention kernel: ``sdpa`` (PyTorch scaled-dot-product) or ``xformers`` (CUDA only, optional)."""
    attention_slicing: bool = False
    """Compute attention in slices to save memory."""
    cpu_offload: bool = False
    """Keep networks on the CPU and move each layer to the GPU only while it runs (sequential offload)."""
