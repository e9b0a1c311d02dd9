"""Reading MATLAB ``.mat`` files (scipy) with one-line errors naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from harness.data.files import DataError


def load_mat(path: Path, *keys: str) -> Any:
    """The variables ``keys`` of ``path`` (one key: that variable alone), loaded with
    ``squeeze_me=True, struct_as_record=False`` (structs read as attribute objects)."""
    import scipy.io

    if not path.is_file():
        raise DataError(f"{path}: missing annotation file")
    try:
        m = scipy.io.loadmat(path, squeeze_me=True, struct_as_record=False)
    except (OSError, ValueError, TypeError, NotImplementedError) as err:
        raise DataError(f"{path}: not a readable .mat file ({err})") from None
    missing = [k for k in keys if k not in m]
    if missing:
        raise DataError(f"{path}: no variable {missing[0]!r} (has "
                        f"{', '.join(k for k in m if not k.startswith('__'))})")
    out = [m[k] for k in keys]
    return out[0] if len(out) == 1 else out


def cell_strings(value: Any, path: Path, key: str) -> list[str]:
    """A MATLAB cell array of strings (or one string) as a list."""
    items = [value] if isinstance(value, str) else list(np.atleast_1d(value))
    out = []
    for v in items:
        v = v if isinstance(v, str) else (v.item() if isinstance(v, np.ndarray) and v.size == 1
                                          else None)
        if not isinstance(v, str):
            raise DataError(f"{path}: {key!r} must be a cell array of strings")
        out.append(v)
    return out
