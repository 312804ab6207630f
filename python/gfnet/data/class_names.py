"""Class names: read from a names file, or from the data a model was trained on.

Checkpoints store the names of their data (``class_names``: ImageFolder folder names, CIFAR's
names, the digits "0" .. "9"); a model whose checkpoint has none (an imported official one)
gets them from a names file the user gives (``gfnet.load(..., class_names=FILE)``,
``gfnet predict --class-names FILE``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset, Subset

from ..errors import DataError


def read_class_names(path: str | Path, num_classes: int | None = None) -> list[str]:
    """The class names in a file, in class-index order:

    - a text file: one name per line (surrounding blank lines ignored);
    - a JSON file: a list of names, or an object from index to a name or to a list whose last
      item is the name (``{"0": ["n01440764", "tench"], ...}``, the usual ImageNet index file).

    ``num_classes``: how many the model has (a DataError naming the file if the count differs).
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"class names file {str(p)!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"cannot read class names file {str(p)!r} ({type(e).__name__}: {e})") from None
    if p.suffix.lower() == ".json":
        try:
            names = _names_from_json(json.loads(text))
        except (json.JSONDecodeError, ValueError) as e:
            raise DataError(f"class names file {str(p)!r}: {e}") from None
    else:
        names = [line.strip() for line in text.strip().splitlines()]
        blank = [i + 1 for i, n in enumerate(names) if not n]
        if blank:
            raise DataError(f"class names file {str(p)!r}: line {blank[0]} of the names is blank "
                            "(one name per line)")
    if not names:
        raise DataError(f"class names file {str(p)!r} holds no names")
    if num_classes is not None and len(names) != num_classes:
        raise DataError(f"class names file {str(p)!r} holds {len(names)} names; the model has "
                        f"{num_classes} classes")
    return names


def _names_from_json(obj: Any) -> list[str]:
    if isinstance(obj, list):
        if not all(isinstance(n, str) for n in obj):
            raise ValueError("a JSON list of names must hold strings only")
        return list(obj)
    if isinstance(obj, dict):
        try:
            index = {int(k): v for k, v in obj.items()}
        except ValueError:
            raise ValueError("the keys of a JSON object of names must be class indices 0, 1, ...") from None
        if sorted(index) != list(range(len(index))):
            raise ValueError(f"the class indices must be 0 .. {len(index) - 1} without gaps")
        names = []
        for k in range(len(index)):
            v = index[k]
            v = v[-1] if isinstance(v, list) and v else v
            if not isinstance(v, str):
                raise ValueError(f"class {k}: {index[k]!r} is not a name")
            names.append(v)
        return names
    raise ValueError("expected a JSON list of names or an object from class index to name")


def check_class_names(names: Sequence[str], num_classes: int, what: str = "class_names") -> list[str]:
    """``names`` as a list, or a DataError if there is not one per class."""
    if isinstance(names, str) or not all(isinstance(n, str) for n in names):
        raise DataError(f"{what} must be a list of strings (or a names file)")
    if len(names) != num_classes:
        raise DataError(f"{what} has {len(names)} names; the model has {num_classes} classes")
    return list(names)


def class_names_from(names: str | Path | Sequence[str], num_classes: int) -> list[str]:
    """One name per class from a names file (``read_class_names``) or a list of names
    (``check_class_names``); a DataError if they do not fit."""
    if isinstance(names, (str, Path)):
        return read_class_names(names, num_classes)
    return check_class_names(names, num_classes)


def dataset_classes(ds: Dataset) -> list[str] | None:
    """The ``classes`` a data set declares (torchvision's ImageFolder and CIFAR do), looking
    through Subset; None if it declares none."""
    while isinstance(ds, Subset):
        ds = ds.dataset
    classes = getattr(ds, "classes", None)
    if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
        return list(classes)
    return None


__all__ = ["check_class_names", "class_names_from", "dataset_classes", "read_class_names"]
