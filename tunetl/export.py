"""`tunetl export-model`: a delivered classifier as ONNX or TorchScript, checked against PyTorch.

The exported graph is `ImageClassifier.forward`: uint8 images (B, C, H, W) at the training size in,
softmax probabilities (B, K) out, preprocessing included. Decoding and resizing files to (H, W) stay
outside (the pyfunc and `tunetl classify` do them); the class names are written beside the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tunetl.classifier import ImageClassifier
from tunetl.config import ConfigError

INPUT_NAME, OUTPUT_NAME = "images", "probabilities"


def check_batch(clf: ImageClassifier, n: int, seed: int = 0) -> torch.Tensor:
    """`n` seeded uint8 images of the classifier's input shape (the comparison's inputs)."""
    gen = torch.Generator().manual_seed(seed)
    shape = (n, clf.spec.image_channels, *clf.spec.image_size)
    return torch.randint(0, 256, shape, generator=gen, dtype=torch.int64).to(torch.uint8)


def _onnx(clf: ImageClassifier, out: Path) -> Any:
    try:
        import onnxruntime
        import onnxscript  # noqa: F401  (torch's dynamo exporter imports it; fail here with the fix)
    except ImportError as exc:
        raise ConfigError(f"--format onnx needs {exc.name}: pip install 'tunetl[export]' "
                          "(or use --format torchscript, which needs nothing more)") from exc

    example = clf.example(2)
    torch.onnx.export(clf, (example,), str(out), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), dynamo=True, verbose=False)
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return lambda x: session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]


def _torchscript(clf: ImageClassifier, out: Path) -> Any:
    import warnings

    # The shape checks in preprocessing become constants of the trace: right for this fixed input shape.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(clf, clf.example(2))
    torch.jit.save(traced, str(out))
    loaded = torch.jit.load(str(out))
    return lambda x: loaded(x).detach().numpy()


def export_classifier(clf: ImageClassifier, fmt: str, out: Path, *, check_images: int = 32) -> dict[str, Any]:
    """Write `out` (and `out` + `.json`: class names, input shape) and return how far the exported
    model's probabilities are from PyTorch's on `check_images` seeded images."""
    out.parent.mkdir(parents=True, exist_ok=True)
    clf.eval()
    run = _onnx(clf, out) if fmt == "onnx" else _torchscript(clf, out)
    batch = check_batch(clf, check_images)
    with torch.no_grad():
        expected = clf(batch).numpy()
    got = np.asarray(run(batch))
    diff = float(np.abs(got - expected).max())
    meta = {"format": fmt, "input": {"name": INPUT_NAME, "dtype": "uint8",
                                     "shape": ["batch", clf.spec.image_channels, *clf.spec.image_size]},
            "output": {"name": OUTPUT_NAME, "classes": list(clf.spec.class_names)}, "max_abs_diff": diff,
            "images_checked": check_images}
    out.with_name(out.name + ".json").write_text(json.dumps(meta, indent=2))
    return {"path": str(out), "format": fmt, "max_abs_diff": diff, "images": check_images}
