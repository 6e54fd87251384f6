"""Reading the weights files people save: the state dict inside, and nothing else.

``torch.save(model.state_dict())``, torchvision's weights cache, training scripts' wrappers
({"state_dict": ...} or {"model": ...}, DataParallel's "module." and torch.compile's
"_orig_mod." prefixes). Files are only ever read with ``torch.load(weights_only=True)``
(``sdprune.files.load_weights``): a file holding pickled code (a whole saved ``nn.Module``)
is refused in one line, never executed.
"""

from __future__ import annotations

import os
import pickle
import re
from collections.abc import Mapping

from torch import Tensor

from sdprune.errors import SdpruneError
from sdprune.files import input_path, load_weights

__all__ = ["describe_object", "is_state_dict", "load_state_dict_file", "state_dict_from"]


def is_state_dict(obj: object) -> bool:
    """A non-empty mapping of names to tensors (what ``model.state_dict()`` gives)."""
    return (isinstance(obj, Mapping) and len(obj) > 0
            and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items()))


def load_state_dict_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict in a weights file, read without unpickling any code.

    Accepts what ``torch.save(model.state_dict(), f)`` writes and what torchvision's
    weights API caches, or a dict wrapping one under "state_dict" or "model" (as training
    scripts save it); a "module." (DataParallel) or "_orig_mod." (torch.compile) prefix on
    every key is dropped. Anything else is a one-line SdpruneError.
    """
    path = input_path(path, "weights file", file=True)
    try:
        obj = load_weights(path)
    except pickle.UnpicklingError as err:  # weights_only met something that is not a tensor
        found = re.search(r"GLOBAL (\S+) was not an allowed global", str(err))
        if found:
            raise SdpruneError(f"{path} holds pickled Python objects ({found.group(1)}: a whole saved model?), "
                               "not a state dict; sdprune never unpickles code: save model.state_dict() "
                               "instead") from None
        raise SdpruneError(f"{path} is not a PyTorch weights file") from None
    except Exception as err:  # noqa: BLE001  (not a torch file at all, truncated, ...: torch raises anything)
        raise SdpruneError(f"{path} is not a PyTorch weights file ({type(err).__name__})") from None
    return state_dict_from(obj, path)


def state_dict_from(obj: object, path: str | os.PathLike) -> dict[str, Tensor]:
    """``load_state_dict_file``'s unwrapping and checks on an object already read from ``path``."""
    if isinstance(obj, Mapping) and not is_state_dict(obj):
        obj = next((obj[k] for k in ("state_dict", "model") if is_state_dict(obj.get(k))), obj)
    if not is_state_dict(obj):
        raise SdpruneError(f"{path} holds {describe_object(obj)}, not a state dict (a dict of tensors, "
                           "as model.state_dict() gives)")
    state = dict(obj)
    for prefix in ("module.", "_orig_mod."):
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def describe_object(obj: object) -> str:
    """What ``obj`` is, for a refusal: "a list", "a dict with non-tensor entries (e.g. ...)"."""
    if not isinstance(obj, Mapping):
        return f"a {type(obj).__name__}"
    if not obj:
        return "an empty dict"
    key, value = next((k, v) for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, Tensor)))
    return f"a dict with non-tensor entries (e.g. {key!r}: {type(value).__name__})"
