"""Reading MATLAB ``.mat`` files (scipy) with one-line errors naming the file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

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
