#!/usr/bin/env python
"""Installs mvit_det: MViTv2 backbones, configs and tools for Detectron2."""

from setuptools import find_packages, setup

setup(
    name="mvit_det",
    version="0.1.0",
    description="MViTv2 with Hybrid Window Attention as a Detectron2 backbone",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["mvit_det", "mvit_det.*"]),
    package_data={
        "mvit_det.model_zoo": [
            "configs/*.py",
            "configs/common/*.py",
            "configs/demo/*.py",
            "configs/published/*.py",
            "configs/published/LVIS/*.py",
            "configs/yacs/*.yaml",
            "configs/yacs/demo/*.yaml",
            "projects/*/configs/*/*.py",
        ]
    },
    include_package_data=True,
    python_requires=">=3.9",
    install_requires=[
        "torch",
        "torchvision",
        "fvcore",
        "iopath",
        "pycocotools",
        "opencv-python-headless",
        "timm",
        "safetensors",
        # the training curves (metrics.png, tools/plot_metrics.py); detectron2 requires it too
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest", "shapely", "onnx", "onnxruntime", "onnxscript"],
        # ONNX export (tools/export.py): the exporters need onnx (+ onnxscript for dynamo=True),
        # checking an export runs it with onnxruntime.
        "export": ["onnx", "onnxruntime", "onnxscript"],
    },
)
