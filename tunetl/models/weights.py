"""Loading weights safely and fitting them onto a `StagedModel`.

Weights files come from users, caches and other machines, and unpickling can run arbitrary code, so
every file goes through `torch.load(weights_only=True)` and must turn out to be a plain
`dict[str, Tensor]`. Anything else is refused with the reason.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from tunetl.models.staged import StagedModel, stage_index

log = logging.getLogger(__name__)

#: environment variables that would switch torch.load to full unpickling when weights_only is unset
_UNSAFE_LOAD_ENV = ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD",)
_ENV_LOCK = threading.Lock()
_NETWORK_LOCK = threading.Lock()
_WRAPPER_KEYS = ("state_dict", "model")
_SHOWN_KEYS = 10


class WeightsError(RuntimeError):
    """A weights file or state dict cannot be used: refused, unreadable or not fitting the model."""


@contextmanager
def _safe_load_env() -> Iterator[None]:
    """Hide `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD` during the load.

    torch 2.14 lets that variable override `weights_only` only when the caller did not pass it, and
    tunetl always passes `weights_only=True`; removing it as well keeps files refused should a torch
    version ever honour it more broadly. The lock serialises tunetl's own loads, nothing else.
    """
    with _ENV_LOCK:
        saved = {name: os.environ.pop(name) for name in _UNSAFE_LOAD_ENV if name in os.environ}
        try:
            yield
        finally:
            os.environ.update(saved)


def load_state_file(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict with `torch.load(map_location="cpu", weights_only=True)`.

    Accepts a plain `dict[str, Tensor]`, or a dict whose `state_dict` or `model` entry is one (a
    training checkpoint). Pickled modules, `__reduce__` payloads, anything else -> WeightsError.
    """
    file = Path(path)
    if not file.is_file():
        raise WeightsError(f"weights file {file} does not exist (or is not a file); check the path")
    if file.suffix == ".safetensors":
        return _load_safetensors(file)
    try:
        with _safe_load_env():
            obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for bad files
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "weights only load failed" in str(exc).lower():
            raise WeightsError(
                f"refused {file}: it is not a plain state dict of tensors; unpickling it would "
                "need arbitrary Python objects, which can run code "
                f"({_unsupported_global(str(exc))}). Save weights with "
                "torch.save(model.state_dict(), path) and load that file instead."
            ) from None
        raise WeightsError(f"could not read {file} as a torch state dict: {first_line}") from None
    return _as_state_dict(obj, file)


def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    """A `.safetensors` file holds tensors only (no code can run), e.g. timm's Hugging Face weights."""
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise WeightsError(f"{file}: reading .safetensors needs the safetensors package") from None
    try:
        state = load_file(str(file), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise WeightsError(f"could not read {file} as safetensors: {exc}") from None
    return _as_state_dict(state, file)


def _unsupported_global(message: str) -> str:
    """The Python object torch's weights-only unpickler refused, e.g. `io.open`."""
    found = re.search(r"Unsupported global: GLOBAL (\S+)", message)
    return (
        f"it references {found.group(1)}" if found else "torch's weights-only unpickler refused it"
    )


def _as_state_dict(obj: object, file: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and not _is_tensor_dict(obj):
        for key in _WRAPPER_KEYS:
            if isinstance(obj.get(key), Mapping) and _is_tensor_dict(obj[key]):
                return dict(obj[key])
    if isinstance(obj, Mapping) and _is_tensor_dict(obj):
        return dict(obj)
    raise WeightsError(
        f"refused {file}: expected a plain dict[str, Tensor] (or a dict with a 'state_dict' or "
        f"'model' entry holding one), found {_describe(obj)}"
    )


def _is_tensor_dict(obj: Mapping[object, object]) -> bool:
    return bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    )


def _describe(obj: object) -> str:
    if not isinstance(obj, Mapping):
        return f"a {type(obj).__name__}"
    if not obj:
        return "an empty dict"
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            return f"a dict whose entry {key!r} is a {type(value).__name__}"
    return "a dict"


def stage_state(
    state: Mapping[str, torch.Tensor], stages: Iterable[int]
) -> dict[str, torch.Tensor]:
    """The entries of `state` that belong to the given 0-based stages (`stages.<i>.` keys); e.g.
    DESIGN's "stages 1..n" is `stage_state(state, range(n))`."""
    wanted = set(stages)
    return {key: value for key, value in state.items() if stage_index(key) in wanted}


def _shown(keys: list[str]) -> str:
    more = f", ... ({len(keys) - _SHOWN_KEYS} more)" if len(keys) > _SHOWN_KEYS else ""
    return f"{len(keys)}: " + ", ".join(keys[:_SHOWN_KEYS]) + more


def _from_torchvision_layout(
    model: StagedModel, state: Mapping[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Translate torchvision keys (e.g. `layer1.0.conv1.weight`) to staged keys; torchvision's own
    classifier is dropped. Keys torchvision does not know are kept for the error report."""
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if key not in model.torchvision_keys:
            out[key] = value
        elif (target := model.torchvision_keys[key]) is None:
            dropped.append(key)
        else:
            out[target] = value
    return out, dropped


def _first_conv_key(model: StagedModel) -> str | None:
    for name, module in model.stages[0].named_modules():
        if isinstance(module, nn.Conv2d):
            return f"stages.0.{name}.weight" if name else "stages.0.weight"
    return None


def adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Fit a first-conv kernel (out, c, kh, kw) to `in_channels` inputs: sum over the source
    channels, divided by the new count and repeated, so an image whose channels are all equal (a
    grayscale image replicated) gives the same response; 3 -> 1 is the sum of the RGB kernels."""
    summed = weight.sum(dim=1, keepdim=True) / in_channels
    return summed.repeat(1, in_channels, 1, 1)


def apply_weights(
    model: StagedModel,
    state: Mapping[str, torch.Tensor],
    strict_head: bool = False,
    source: str = "the state dict",
) -> list[str]:
    """Load `state` into `model` and return the keys that were skipped.

    `state` is in the staged layout or, for torchvision backbones, torchvision's own layout. A head
    that does not fit (another class count or head kind) is skipped and said so, unless
    `strict_head`; a first convolution saved for another number of input channels is adapted
    (`adapt_first_conv`); any other missing, unexpected or mis-shaped key -> WeightsError naming
    the keys.
    """
    skipped: list[str] = []
    given = dict(state)
    if model.torchvision_keys and not any(k.startswith(("stages.", "head.")) for k in given):
        given, skipped = _from_torchvision_layout(model, given)
        if skipped:
            log.info(
                "%s: dropped torchvision's ImageNet classifier (%s)", model.name, _shown(skipped)
            )
    expected = model.state_dict()
    conv_key = _first_conv_key(model)
    if conv_key and conv_key in given and given[conv_key].ndim == 4:
        have, want = given[conv_key].shape, expected[conv_key].shape
        if have[1] != want[1] and (have[0], *have[2:]) == (want[0], *want[2:]):
            log.info(
                "%s: adapted %s from %d to %d input channels",
                model.name,
                conv_key,
                have[1],
                want[1],
            )
            given[conv_key] = adapt_first_conv(given[conv_key], want[1])

    body_given = {k: v for k, v in given.items() if not k.startswith("head.")}
    body_expected = {k: v for k, v in expected.items() if not k.startswith("head.")}
    missing = [k for k in body_expected if k not in body_given]
    unexpected = [k for k in body_given if k not in body_expected]
    wrong = [
        f"{k} (file {tuple(v.shape)} vs model {tuple(body_expected[k].shape)})"
        for k, v in body_given.items()
        if k in body_expected and v.shape != body_expected[k].shape
    ]
    if missing or unexpected or wrong:
        problems = [
            f"{label} {_shown(keys)}"
            for label, keys in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("wrong shapes", wrong),
            )
            if keys
        ]
        raise WeightsError(
            f"{source} does not fit backbone {model.name!r} "
            f"(stages {', '.join(model.stage_names)}): "
            + "; ".join(problems)
            + ". Was it saved from another backbone? Use a file saved from "
            f"build({model.name!r}, ...) with the same settings."
        )

    head_given = {k: v for k, v in given.items() if k.startswith("head.")}
    head_expected = {k: v for k, v in expected.items() if k.startswith("head.")}
    fits = head_given.keys() == head_expected.keys() and all(
        head_given[k].shape == head_expected[k].shape for k in head_given
    )
    loaded = dict(body_given)
    if head_given and fits:
        loaded.update(head_given)
    elif head_given:
        reason = _head_mismatch(head_given, head_expected)
        if strict_head:
            raise WeightsError(f"{source}: the head does not fit backbone {model.name!r}: {reason}")
        log.info(
            "%s: skipped the head of %s (%s); the head keeps its fresh initialisation",
            model.name,
            source,
            reason,
        )
        skipped += sorted(head_given)
    model.load_state_dict(loaded, strict=False)
    return skipped


def _head_mismatch(given: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> str:
    if given.keys() != expected.keys():
        return (
            f"the file's head has keys {sorted(given)}, the model's {sorted(expected)} "
            "(another head kind)"
        )
    bad = [k for k in given if given[k].shape != expected[k].shape]
    return (
        "; ".join(
            f"{k}: file {tuple(given[k].shape)} vs model {tuple(expected[k].shape)}" for k in bad
        )
        + " (a different class count)"
    )


@contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """torch.hub's download has no timeout argument; bound it through the socket default."""
    with _NETWORK_LOCK:
        saved = socket.getdefaulttimeout()
        socket.setdefaulttimeout(seconds)
        try:
            yield
        finally:
            socket.setdefaulttimeout(saved)


def imagenet_state(backbone: str, timeout: float = 20.0) -> dict[str, torch.Tensor]:
    """torchvision's ImageNet weights for `backbone`, from the torch hub cache or downloaded there.

    No network -> WeightsError saying where to put the file; the download gives up after `timeout`
    seconds without an answer instead of hanging.
    """
    from tunetl.models.torchvision_nets import imagenet_url

    url = imagenet_url(backbone)
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    target = cache / url.rsplit("/", 1)[-1]
    if not target.is_file():
        try:
            cache.mkdir(parents=True, exist_ok=True)
            with _socket_timeout(timeout):
                torch.hub.download_url_to_file(url, str(target), progress=False)
        except Exception as exc:  # urllib, OSError, timeouts: all "not available"
            raise WeightsError(
                f"ImageNet weights for {backbone!r} are not in the torch hub cache ({target}) and "
                f"downloading {url} failed: {exc}. Without network: download that file "
                f"elsewhere and copy it to {target}, or set TORCH_HOME to a directory whose "
                "hub/checkpoints/ holds it, or give the file directly as the source's "
                "weights_file (torchvision and tunetl layouts are both accepted)."
            ) from None
    return load_state_file(target)
