"""Your own captioned images: a folder of image files plus captions.csv or captions.jsonl.

``FolderDataset`` returns the same item dicts as the shapes data (``data.ShapesDataset``), so every stage trains
on your own pictures too; ``Subset`` cuts it into train / val / test. ``load_image`` reads one file the way
everything else does: any mode PIL reads, converted to RGB (transparency composited on black) and centre-cropped
to a square, and says what it changed.
"""

import csv
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from minidalle2.data import SUPPORTED_SIZES, to_item
from minidalle2.errors import UserError


def load_image(path, image_size: int) -> tuple[torch.Tensor, list[str]]:
    """Any image PIL can read -> float (3, S, S) in [0, 1], plus notes on what was changed.

    Transparent images are composited on black, the shapes dataset's background. Non-square images are
    centre-cropped rather than squashed, so circles stay circles.
    """
    image, notes = _load_uint8(path, image_size)
    return image.float() / 255, notes


def _load_uint8(path, image_size: int) -> tuple[torch.Tensor, list[str]]:
    check_image_size(image_size)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"image file not found: {path}; check the path")
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # phone photos store their rotation in EXIF
            im.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise UserError(f"cannot read image {path} ({type(e).__name__}); is it a PNG/JPEG image?") from None
    notes = []
    mode = im.mode
    deep = mode.startswith("I") or mode == "F"  # 16-bit, 32-bit integer or float greyscale
    if deep:
        im = _to_8_bits(im)
    has_alpha = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in im.info)
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"), np.float32)
        rgb = rgba[..., :3] * (rgba[..., 3:] / 255)  # composite on black
        im = Image.fromarray((rgb + 0.5).astype(np.uint8), "RGB")
        notes.append(f"converted {mode} to RGB (composited on black)")
    elif mode != "RGB":
        im = im.convert("RGB")
        notes.append(f"converted {mode} to RGB" + (" (scaled to 8 bits, not clipped)" if deep else ""))
    w, h = im.size
    if w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
    if im.size != (image_size, image_size):
        im = im.resize((image_size, image_size), Image.Resampling.BICUBIC)
    if (w, h) != (image_size, image_size):
        crop = "centre-cropped and " if w != h else ""
        notes.append(f"{crop}resized {w}x{h} to {image_size}x{image_size}")
    return torch.from_numpy(np.array(im, np.uint8)).permute(2, 0, 1), notes  # (3, S, S) uint8


def _to_8_bits(im: Image.Image) -> Image.Image:
    """A high-bit-depth greyscale image scaled (not clipped) to 8-bit L: PIL's convert("RGB") clips, so 16-bit
    mid-grey (32768) would come out white. Integers scale by their bit depth (16 bits unless values exceed it),
    floats by 255 when they lie in [0, 1]."""
    a = np.asarray(im, np.float64)
    if im.mode == "F":
        top = 1.0 if a.size and a.max() <= 1 else 255.0
    else:
        top = 65535.0 if not a.size or a.max() <= 65535 else 2.0**32 - 1
        top = 255.0 if im.mode == "I" and a.size and a.max() <= 255 else top  # an 8-bit image stored as I
    return Image.fromarray((np.clip(a / top, 0, 1) * 255 + 0.5).astype(np.uint8), "L")


def _check_row(line: int, file: str, text: str) -> tuple[int, str, str, str | None]:
    file, text = file.strip(), text.strip()
    problem = "empty file name" if not file else f"empty caption for {file}" if not text else None
    return line, file, text, problem


def _csv_rows(path: Path):
    """Yield (line number, file, caption, problem or None) for each row of a captions.csv."""
    with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel starts its CSVs with a BOM
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != ["file", "caption"]:
            raise UserError(f"{path} line 1: header must be 'file,caption', got {header}")
        for row in reader:
            if not any(cell.strip() for cell in row):
                continue
            if len(row) != 2:
                yield reader.line_num, "", "", f"{len(row)} fields, expected 2 (quote captions with commas)"
            else:
                yield _check_row(reader.line_num, row[0], row[1])


def _jsonl_rows(path: Path):
    """Yield (line number, file, caption, problem or None) for each line of a captions.jsonl."""
    with open(path, encoding="utf-8-sig") as f:
        for line, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                row = json.loads(text)
            except json.JSONDecodeError as e:
                yield line, "", "", f"not valid JSON ({e.msg})"
                continue
            if isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("file", "caption")):
                yield _check_row(line, row["file"], row["caption"])
            else:
                yield line, "", "", 'expected {"file": "...", "caption": "..."}'


def check_image_size(image_size: int) -> None:
    if image_size not in SUPPORTED_SIZES:
        raise UserError(f"image size {image_size} is not supported; use one of {SUPPORTED_SIZES}")


class FolderDataset(torch.utils.data.Dataset):
    """Your own captioned images: root/captions.csv (header "file,caption") or root/captions.jsonl
    ({"file": ..., "caption": ...} per line), file paths relative to root.

    Every image is loaded, converted and resized up front, so a bad file fails now, with its line number,
    not an hour into training. skip_bad=True skips bad rows instead; see .skipped and .problems.
    """

    def __init__(self, root, image_size: int = 32, skip_bad: bool = False):
        check_image_size(image_size)
        self.root = root = Path(root)
        if not root.is_dir():
            raise UserError(f"data folder {root} does not exist; pass a folder with captions.csv or .jsonl")
        found = [root / name for name in ("captions.csv", "captions.jsonl") if (root / name).is_file()]
        if len(found) != 1:
            has = "has neither" if not found else "has both"
            raise UserError(f"{root} {has} captions.csv (header file,caption) and captions.jsonl; provide one")
        self.captions_path = found[0]
        self.image_size, self.skipped, self.problems = image_size, 0, []
        self.notes: dict[str, list[str]] = {}  # file -> what load_image changed
        images, self._captions = [], []
        read_rows = _csv_rows if self.captions_path.suffix == ".csv" else _jsonl_rows
        try:
            rows = list(read_rows(self.captions_path))
        except (csv.Error, UnicodeDecodeError) as e:
            raise UserError(f"cannot parse {self.captions_path} ({e}); save it as UTF-8 text") from None
        for line, file, text, problem in rows:
            if problem is None:
                try:
                    image, notes = _load_uint8(root / file, image_size)
                except UserError as e:
                    problem = str(e)
            if problem is not None:
                message = f"{self.captions_path} line {line}: {problem}"
                if not skip_bad:
                    raise UserError(f"{message}; fix or remove the row, or skip bad rows with --skip-bad")
                self.skipped += 1
                self.problems.append(message)
                continue
            if notes:
                self.notes[file] = notes
            images.append(image)
            self._captions.append(text)
        if not images:
            raise UserError(f"{self.captions_path} has no usable rows; add rows like: cat.png,a black cat")
        self._images = torch.stack(images)  # (N, 3, S, S) uint8

    def summary(self) -> str | None:
        """What loading changed, counted over every image, e.g. '1,911 of 1,911 images converted: 1,911 converted
        RGBA to RGB (composited on black); 1,911 resized 64x64 to 32x32' (None when nothing was changed)."""
        if not self.notes:
            return None
        counts: dict[str, int] = {}
        for notes in self.notes.values():
            for note in notes:
                counts[note] = counts.get(note, 0) + 1
        changes = "; ".join(f"{count:,} {note}" for note, count in sorted(counts.items(), key=lambda kv: -kv[1]))
        return f"{self.root}: {len(self.notes):,} of {len(self):,} images converted: {changes}"

    def __len__(self) -> int:
        return len(self._captions)

    def __getitem__(self, i: int) -> dict:
        return to_item(self._images[i], self._captions[i], {})

    def images(self) -> torch.Tensor:
        return self._images

    def captions(self) -> list[str]:
        return list(self._captions)

    def attributes(self) -> list[dict]:
        return [{} for _ in self._captions]


class Subset(torch.utils.data.Dataset):
    """A contiguous slice of a dataset that keeps the ``images() / captions() / attributes()`` API."""

    def __init__(self, dataset, indices: range):
        self.dataset, self.indices = dataset, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict:
        return self.dataset[self.indices[i]]

    def images(self) -> torch.Tensor:
        return self.dataset.images()[self.indices.start:self.indices.stop]

    def captions(self) -> list[str]:
        return self.dataset.captions()[self.indices.start:self.indices.stop]

    def attributes(self) -> list[dict]:
        return self.dataset.attributes()[self.indices.start:self.indices.stop]
