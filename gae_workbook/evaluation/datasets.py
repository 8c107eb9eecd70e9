"""Image data for the evaluation harness (:mod:`.harness`), in the layouts users have.

:func:`open_data` reads, as one kind of :class:`torch.utils.data.Dataset` of :class:`Sample`:

* an **ImageFolder** tree (``root/<class>/<image>``, torchvision's ``ImageFolder``; the label is
  the index of the class folder in sorted order, which for ImageNet's synset folders is the
  standard class index) or a flat folder of images (no labels);
* a **Hugging Face** ``datasets`` directory written by ``save_to_disk`` (columns ``image``,
  ``label`` and optionally ``mask``; a ``DatasetDict`` needs a split);
* the **ImageNet-segmentation** file ``gtsegs_ijcv.mat`` (Guillaumin et al. 2014; the file the
  authors' ``imagenet_seg_eval.py`` reads): MATLAB v7.3, i.e. HDF5, with ``/value/img`` and
  ``/value/gt`` columns of object references (:func:`write_imagenet_seg` writes the same layout);
* any of the above with a **folder of masks** beside it: ``masks/<stem>.png`` for each image
  ``<stem>.*`` (non-zero pixels are foreground).

Images stay PIL images here; the model's own preprocessing is applied by the harness.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

__all__ = ["Sample", "open_data", "write_imagenet_seg", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm")


@dataclass
class Sample:
    """One image with what is known about it.

    Attributes:
        image: RGB PIL image.
        label: class index, or -1 when the data has no labels.
        mask: ``(H, W)`` bool foreground at the image's size, or None.
        name: a stable identifier (file path or row index).
    """

    image: Image.Image
    label: int
    mask: np.ndarray | None
    name: str


class _Data(Dataset):
    """Base of the readers: ``has_labels`` and ``has_masks`` hold for every item or none.

    Attributes:
        class_names: the name of each label index (ImageFolder folders, a ``ClassLabel``), or ``[]``.
        split: the split of a ``DatasetDict`` that was read, or None.
    """

    has_labels: bool = False
    has_masks: bool = False
    class_names: list[str] = []
    split: str | None = None

    def source(self, index: int) -> str:
        """Where item ``index`` is read from (a file, a row), without reading it: for error messages."""
        return f"item {index}"

    def labels(self) -> list[int]:
        """Every item's label, without reading the images (``[]`` without labels)."""
        return [self[i].label for i in range(len(self))] if self.has_labels else []


def _mask_array(mask: Image.Image | np.ndarray) -> np.ndarray:
    array = np.asarray(mask)
    return (array.max(axis=-1) if array.ndim == 3 else array) > 0  # (H, W) bool


class _Folder(_Data):
    """ImageFolder tree or flat folder; optional masks folder matched by file stem."""

    def __init__(self, root: Path, masks: Path | None) -> None:
        from torchvision.datasets import ImageFolder

        self.root = root
        if any(p.is_dir() for p in root.iterdir()):
            folder = ImageFolder(str(root))
            self.items = [(Path(path), label) for path, label in folder.samples]
            self.classes = folder.classes
            self.class_names = list(folder.classes)
            self.has_labels = True
        else:
            self.items = [(p, -1) for p in sorted(root.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
            self.classes = []
        if not self.items:
            raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found under {root}.")
        self.masks = None
        if masks is not None:
            found = {p.stem: p for p in masks.rglob("*.png")}
            missing = [path.name for path, _ in self.items if path.stem not in found]
            if missing:
                raise ValueError(
                    f"{len(missing)} images have no mask <stem>.png in {masks} (first: {missing[:3]}); "
                    "name each mask after its image."
                )
            self.masks = [found[path.stem] for path, _ in self.items]
            self.has_masks = True

    def __len__(self) -> int:
        return len(self.items)

    def source(self, index: int) -> str:
        return str(self.items[index][0])

    def labels(self) -> list[int]:
        return [label for _, label in self.items] if self.has_labels else []

    def __getitem__(self, index: int) -> Sample:
        path, label = self.items[index]
        mask = _mask_array(Image.open(self.masks[index])) if self.masks is not None else None
        return Sample(Image.open(path).convert("RGB"), label, mask, str(path.relative_to(self.root)))


class _HuggingFace(_Data):
    """A ``datasets`` directory written by ``save_to_disk``."""

    def __init__(self, root: Path, split: str | None) -> None:
        import datasets

        data = datasets.load_from_disk(str(root))
        if isinstance(data, datasets.DatasetDict):
            if split is None:
                split = "validation" if "validation" in data else next(iter(data))
            if split not in data:
                raise ValueError(f"split {split!r} is not in {root}; it has {list(data)}.")
            data = data[split]
            self.split = split
        if "image" not in data.column_names:
            raise ValueError(f"{root} has no 'image' column (columns: {data.column_names}); rename it to 'image'.")
        self.data = data
        self.has_labels = "label" in data.column_names
        self.has_masks = "mask" in data.column_names
        self.root = root
        label_feature = data.features.get("label") if self.has_labels else None
        self.class_names = list(getattr(label_feature, "names", None) or [])

    def __len__(self) -> int:
        return len(self.data)

    def source(self, index: int) -> str:
        return f"{self.root} row {index}" + (f" of split {self.split!r}" if self.split else "")

    def labels(self) -> list[int]:
        return [int(v) for v in self.data["label"]] if self.has_labels else []

    def __getitem__(self, index: int) -> Sample:
        row = self.data[index]
        image = row["image"] if isinstance(row["image"], Image.Image) else Image.fromarray(np.asarray(row["image"]))
        mask = _mask_array(row["mask"]) if self.has_masks else None
        label = int(row["label"]) if self.has_labels else -1
        return Sample(image.convert("RGB"), label, mask, str(index))


class _ImagenetSeg(_Data):
    """The ``gtsegs_ijcv.mat`` layout, read as the authors' ``Imagenet_Segmentation`` does.

    ``/value/img[i, 0]`` references a ``(3, W, H)`` uint8 array (MATLAB's column-major
    ``H x W x 3``); ``/value/gt[i, 0]`` references a ``(1, 1)`` array of references whose entry
    points to the ``(W, H)`` mask. No class labels.
    """

    has_masks = True

    def __init__(self, path: Path) -> None:
        import h5py

        self.path = path
        self.file = None  # opened lazily: one handle per DataLoader worker
        with h5py.File(path, "r") as f:
            if "value/img" not in f or "value/gt" not in f:
                raise ValueError(
                    f"{path} lacks /value/img or /value/gt; is it the ImageNet-segmentation gtsegs_ijcv.mat?"
                )
            self.length = len(f["value/img"])

    def __len__(self) -> int:
        return self.length

    def source(self, index: int) -> str:
        return f"{self.path} entry {index}"

    def __getitem__(self, index: int) -> Sample:
        import h5py

        if self.file is None:
            self.file = h5py.File(self.path, "r")
        f = self.file
        image = np.asarray(f[f["value/img"][index, 0]]).transpose(2, 1, 0)  # (H, W, 3)
        mask = np.asarray(f[f[f["value/gt"][index, 0]][0, 0]]).transpose(1, 0)  # (H, W)
        return Sample(Image.fromarray(image).convert("RGB"), -1, mask > 0, str(index))


def open_data(path: str | Path, masks: str | Path | None = None, split: str | None = None) -> _Data:
    """Open a dataset in any of the layouts of this module.

    Args:
        path: an ImageFolder tree or flat image folder, a ``save_to_disk`` directory, or a
            ``.mat``/``.h5`` ImageNet-segmentation file.
        masks: a folder of ``<stem>.png`` masks for a folder of images.
        split: the split of a saved ``DatasetDict`` (default: ``validation`` if present, else the first).

    Returns:
        A dataset of :class:`Sample` with ``has_labels`` and ``has_masks``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data path {path} does not exist.")
    if path.is_file():
        if path.suffix.lower() not in (".mat", ".h5", ".hdf5"):
            raise ValueError(f"{path} is a file but not a .mat/.h5 ImageNet-segmentation file; pass a folder instead.")
        if masks is not None:
            raise ValueError("the ImageNet-segmentation file holds its own masks; drop --masks.")
        return _ImagenetSeg(path)
    if any((path / name).exists() for name in ("dataset_info.json", "dataset_dict.json", "state.json")):
        if masks is not None:
            raise ValueError("a saved Hugging Face dataset carries masks as its 'mask' column; drop --masks.")
        return _HuggingFace(path, split)
    return _Folder(path, Path(masks) if masks is not None else None)


def write_imagenet_seg(path: str | Path, images: Sequence[np.ndarray], masks: Sequence[np.ndarray]) -> Path:
    """Write images and masks in the ``gtsegs_ijcv.mat`` layout (MATLAB v7.3 / HDF5 references).

    Args:
        path: the file to write.
        images: ``(H, W, 3)`` uint8 arrays.
        masks: ``(H, W)`` arrays, non-zero = foreground.

    Returns:
        The path written.
    """
    import h5py

    if len(images) != len(masks):
        raise ValueError(f"{len(images)} images but {len(masks)} masks.")
    path = Path(path)
    with h5py.File(path, "w") as f:
        refs = f.create_group("#refs#")  # where MATLAB keeps referenced arrays
        img_refs = np.empty((len(images), 1), dtype=h5py.ref_dtype)
        gt_refs = np.empty((len(images), 1), dtype=h5py.ref_dtype)
        for i, (image, mask) in enumerate(zip(images, masks)):
            img_refs[i, 0] = refs.create_dataset(f"img{i}", data=np.asarray(image, np.uint8).transpose(2, 1, 0)).ref
            gt = refs.create_dataset(f"gt{i}", data=np.asarray(mask, np.uint8).transpose(1, 0))
            cell = refs.create_dataset(f"gtcell{i}", data=np.array([[gt.ref]], dtype=h5py.ref_dtype))
            gt_refs[i, 0] = cell.ref
        f.create_dataset("value/img", data=img_refs)
        f.create_dataset("value/gt", data=gt_refs)
    return path
