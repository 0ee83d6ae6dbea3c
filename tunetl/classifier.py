"""A delivered classifier: raw images in, class probabilities out, with no Ray, MLflow or experiment YAML.

`ClassifierSpec` is everything needed to rebuild the network (backbone, head, channels, sizes, class
names) as plain JSON; with a state dict (`torch.load(weights_only=True)`) it gives `ImageClassifier`, whose
forward takes a uint8 batch (B, C, H, W) at the training images' size and returns softmax probabilities,
preprocessing included. `to_model_input` brings any image (encoded bytes, a file, a uint8 array) to that
batch format with the same Pillow conversion the folder loader uses, so inference sees what training saw.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tunetl.data import Preprocess
from tunetl.models import build

#: File names of a saved classifier (a folder): the spec as JSON and the weights as a plain state dict.
SPEC_FILE, WEIGHTS_FILE = "classifier.json", "weights.pt"


@dataclass(frozen=True)
class ClassifierSpec:
    backbone: str
    class_names: list[str]
    #: Channels of the uint8 images the classifier takes (the dataset's: 1 grayscale, 3 RGB).
    image_channels: int
    #: (H, W) of the uint8 images it takes: the training images' size (other sizes are resized to it).
    image_size: tuple[int, int]
    #: Channels the network itself takes (3 for ImageNet weights on grayscale data).
    model_channels: int
    #: The resize inside the network (`training.image_size`); None: the backbone's own input size, if any.
    input_size: int | None
    head: str = "linear"
    activation: str = "relu"
    hidden: int = 512
    dropout: float = 0.3

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ClassifierSpec:
        raw = json.loads(text)
        raw["image_size"] = tuple(raw["image_size"])
        return cls(**raw)


class ImageClassifier(nn.Module):
    """uint8 (B, C, H, W) -> probabilities (B, K): preprocessing, the network and a softmax in one module,
    so that TorchScript and ONNX exports hold all of it."""

    def __init__(self, spec: ClassifierSpec, state: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.model = build(spec.backbone, num_classes=len(spec.class_names), in_channels=spec.model_channels,
                           head=spec.head, activation=spec.activation, hidden=spec.hidden, dropout=spec.dropout)
        size = spec.input_size or self.model.input_size
        # The trial's own resizing (timm models train bicubic): the delivered model sees what training saw.
        self.preprocess = Preprocess(size, spec.model_channels, self.model.mean, self.model.std,
                                     mode=self.model.interpolation)
        if state is not None:
            self.model.load_state_dict(state)
        self.eval()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(self.preprocess(images)), dim=1)

    def example(self, batch: int = 1) -> torch.Tensor:
        """A uint8 batch of the input's shape (for tracing and exports)."""
        return torch.zeros(batch, self.spec.image_channels, *self.spec.image_size, dtype=torch.uint8)

    @torch.no_grad()
    def predict(self, images: Iterable[Any], batch_size: int = 256) -> np.ndarray:
        """Probabilities (N, K) of raw images (see `to_model_input`)."""
        arrays = [to_model_input(item, self.spec) for item in images]
        if not arrays:
            return np.zeros((0, len(self.spec.class_names)), dtype=np.float32)
        out = [self(torch.from_numpy(np.stack(arrays[i : i + batch_size]))).numpy()
               for i in range(0, len(arrays), batch_size)]
        return np.concatenate(out)

    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / SPEC_FILE).write_text(self.spec.to_json())
        torch.save(self.model.state_dict(), folder / WEIGHTS_FILE)
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> ImageClassifier:
        """Rebuild from `save`'s folder: JSON and a plain state dict, nothing unpickled."""
        folder = Path(folder)
        spec = ClassifierSpec.from_json((folder / SPEC_FILE).read_text())
        return cls(spec, torch.load(folder / WEIGHTS_FILE, map_location="cpu", weights_only=True))


def to_model_input(item: Any, spec: ClassifierSpec) -> np.ndarray:
    """One image -> uint8 (C, H, W) at `spec.image_size`: encoded bytes (PNG, JPEG, ...), a path, or a
    uint8 array laid out (H, W), (H, W, C) or (C, H, W) with C in 1, 3 (4: alpha dropped)."""
    from PIL import Image

    from tunetl.data.folder import decode_image, image_to_array
    from tunetl.data.scan import open_image

    if isinstance(item, (bytes, bytearray, memoryview)):
        with open_image(io.BytesIO(bytes(item))) as img:  # type: ignore[arg-type]
            img.load()
            return image_to_array(img, spec.image_channels, spec.image_size)
    if isinstance(item, (str, Path)):
        return decode_image(str(item), spec.image_channels, spec.image_size)
    arr = np.asarray(item)
    if arr.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8 (0-255), got {arr.dtype}; or pass encoded image bytes")
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[2] not in (1, 3, 4):
        arr = arr.transpose(1, 2, 0)
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[:, :, 0]
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    if arr.ndim not in (2, 3):
        raise ValueError(f"an image array is (H, W), (H, W, C) or (C, H, W); got shape {arr.shape}")
    return image_to_array(Image.fromarray(np.ascontiguousarray(arr)), spec.image_channels, spec.image_size)


def top_k(probabilities: np.ndarray, class_names: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """Per image, the `k` most probable (class name, probability), most probable first."""
    k = max(1, min(k, len(class_names)))
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [[(class_names[j], float(p[j])) for j in row] for p, row in zip(probabilities, order, strict=True)]
