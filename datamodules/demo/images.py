"""Image items of the demo: handwritten digits, LFW faces vs background, sample-picture crops."""

from __future__ import annotations

import numpy as np
from PIL import Image

from datamodules.demo.spec import IMAGE_SIZE, OFF_TOPIC, Item, split_by_label
from datamodules.exit_codes import BAD_INPUT, report
from datamodules.extras import missing_message

_TEST_IMAGES_PER_CLASS = 36


def _gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[:, :, None], 3, axis=2)


def _pixel_features(image: np.ndarray, side: int = 14) -> np.ndarray:
    """Mean-centred unit vector of the image's darkness, area-downsampled to ``side`` x ``side``."""
    block = image.shape[0] // side
    gray = image.astype(np.float64).mean(axis=2)[: side * block, : side * block]
    darkness = 1.0 - gray.reshape(side, block, side, block).mean(axis=(1, 3)).ravel() / 255.0
    centred = darkness - darkness.mean()
    norm = np.linalg.norm(centred)
    return centred / norm if norm > 0 else centred


def _demo_import(module: str):
    """``module`` from the ``demo`` extra, or the extras' one error line (exit status 2) saying how to
    install it. Imported on use, not checked up front: only the tasks that need a package import it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise SystemExit(
            report(missing_message("building the demo benchmark", "demo", (top,)), BAD_INPUT)
        ) from None


def digit_items(seed: int) -> tuple[list[Item], list[Item]]:
    """Real 8x8 handwritten digits 0 and 1 (scikit-learn), dark ink on white, upscaled x7 (nearest)."""
    load_digits = _demo_import("sklearn.datasets").load_digits

    digits = load_digits()
    items: list[Item] = []
    for index in np.flatnonzero(np.isin(digits.target, (0, 1))):
        ink = digits.images[index] / 16.0
        gray = np.round(255.0 * (1.0 - ink)).astype(np.uint8)
        big = np.kron(gray, np.ones((IMAGE_SIZE // 8, IMAGE_SIZE // 8), dtype=np.uint8))
        image = _gray_to_rgb(big)
        items.append(
            Item(
                key=f"digit-{index:04d}",
                label=int(digits.target[index]),
                image=image,
                image_key=f"digits/{index:04d}",
                features=_pixel_features(image),
            )
        )
    return split_by_label(items, np.random.default_rng([seed, 1]), test_cap=_TEST_IMAGES_PER_CLASS)


def face_items(seed: int) -> tuple[list[Item], list[Item]]:
    """scikit-image's LFW subset: 100 faces (label 1) and 100 background patches (label 0), 25x25."""
    data = _demo_import("skimage.data")

    images = data.lfw_subset()
    items: list[Item] = []
    for index, face in enumerate(images):
        gray = np.round(255.0 * np.clip(face, 0.0, 1.0)).astype(np.uint8)
        big = np.asarray(Image.fromarray(gray).resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BILINEAR))
        image = _gray_to_rgb(big)
        items.append(
            Item(
                key=f"lfw-{index:03d}",
                label=int(index < 100),
                image=image,
                image_key=f"lfw/{index:03d}",
                features=_pixel_features(image),
            )
        )
    return split_by_label(items, np.random.default_rng([seed, 2]), test_cap=_TEST_IMAGES_PER_CLASS)


# scikit-image sample picture -> what it shows (all ship inside the package)
SAMPLE_PICTURES: dict[str, str] = {
    "astronaut": "a portrait of an astronaut in front of a flag",
    "brick": "a brick wall",
    "camera": "a man with a camera on a tripod",
    "cell": "a living cell under a microscope",
    "chelsea": "a cat lying down",
    "clock": "a clock on a wall",
    "coffee": "a cup of coffee on a saucer",
    "coins": "a set of old coins",
    "colorwheel": "a wheel of hues",
    "grass": "a patch of grass",
    "gravel": "a patch of gravel",
    "horse": "the silhouette of a horse",
    "immunohistochemistry": "stained tissue under a microscope",
    "logo": "the scikit-image logo",
    "microaneurysms": "a scan of blood vessels in an eye",
    "moon": "the surface of the moon",
    "motorcycle": "a motorcycle parked in a workshop",
    "page": "a page of printed text",
    "retina": "the back of a human eye",
    "rocket": "a rocket on its launch pad",
    "text": "a sheet of handwritten text",
}
_CROPS_PER_PICTURE = 4
_CROP_CAPTIONS = (
    "A detail of {what}.",
    "Close-up crop showing {what}.",
    "Part of a picture of {what}.",
    "A small piece of an image of {what}.",
)


def _as_rgb_uint8(array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = np.round(255.0 * np.clip(array, 0.0, 1.0)).astype(np.uint8)
    if array.ndim == 2:
        return _gray_to_rgb(array)
    if array.shape[2] == 4:  # RGBA (the logo): composite on white
        alpha = array[:, :, 3:4].astype(np.float64) / 255.0
        return np.round(array[:, :, :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)
    return array[:, :, :3]


def crop_items(seed: int) -> tuple[list[Item], list[Item]]:
    """Off-topic documents: 56x56 crops of scikit-image's sample pictures, each with a caption.

    Pictures (not crops) are split between test and train, so test crops come from unseen
    pictures. Every crop must show some structure (pixel std >= 8), not a flat patch.
    """
    data = _demo_import("skimage.data")

    rng = np.random.default_rng([seed, 3])
    names = sorted(SAMPLE_PICTURES)
    test_names = {names[i] for i in rng.permutation(len(names))[: len(names) // 2]}
    test: list[Item] = []
    train: list[Item] = []
    for name in names:
        array = data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(data, name)()
        picture = Image.fromarray(_as_rgb_uint8(array))
        scale = 2 * IMAGE_SIZE / min(picture.size)
        size = (
            max(2 * IMAGE_SIZE, round(picture.width * scale)),
            max(2 * IMAGE_SIZE, round(picture.height * scale)),
        )
        small = np.asarray(picture.resize(size, Image.Resampling.BILINEAR))
        crops: list[np.ndarray] = []
        for _ in range(100):
            top = int(rng.integers(0, small.shape[0] - IMAGE_SIZE + 1))
            left = int(rng.integers(0, small.shape[1] - IMAGE_SIZE + 1))
            crop = np.ascontiguousarray(small[top : top + IMAGE_SIZE, left : left + IMAGE_SIZE])
            if crop.astype(np.float64).std() >= 8.0:
                crops.append(crop)
            if len(crops) == _CROPS_PER_PICTURE:
                break
        for index, crop in enumerate(crops):
            caption = _CROP_CAPTIONS[index % len(_CROP_CAPTIONS)].format(what=SAMPLE_PICTURES[name])
            item = Item(
                key=f"crop-{name}-{index}",
                label=OFF_TOPIC,
                text=caption,
                image=crop,
                image_key=f"pictures/{name}-{index}",
                features=_pixel_features(crop),
            )
            (test if name in test_names else train).append(item)
    return test, train
