"""Built-in demo data: synthetic document templates rendered deterministically from a seed.

A template is a document *type* (an ID-card-like card, a form, a letter or a receipt): its layout,
colour scheme, fonts, fixed captions, logo and table grid. An instance fills the variable fields
(names, numbers, the photo) anew. Training gets one clean instance per template, as the reference
recipe trains on one image per template; validation gets several photographed instances of
templates never used in training (zero-shot, as upstream), so same-class pairs differ in their
personal fields and in capture conditions, like real scans do.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from tqdm import tqdm

from doctrain import _io

# Fonts that ship inside the pinned matplotlib wheel: the same bytes on every machine, so the
# rendering does not depend on which system fonts happen to be installed.
_FONT_DIR = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
_FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSerif-Italic.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
    "STIXGeneral.ttf",
)
_KINDS = {"card": (1.0, 0.63), "form": (1.0, 1.3), "letter": (1.0, 1.41), "receipt": (0.55, 1.5)}
_SYLLABLES = "ka to ri an el mo su ne lia ver dor bel tri ga no pe sta qui ro fen".split()
_CAPTIONS = (
    "NAME",
    "SURNAME",
    "DATE OF BIRTH",
    "NUMBER",
    "ISSUED",
    "EXPIRES",
    "ADDRESS",
    "CLASS",
    "NATIONALITY",
    "SEX",
    "TOTAL",
    "AMOUNT",
    "REFERENCE",
    "SIGNATURE",
    "ACCOUNT",
    "PERIOD",
)


def _word(rng: random.Random, syllables: int | None = None) -> str:
    n = syllables or rng.randint(2, 4)
    return "".join(rng.choice(_SYLLABLES) for _ in range(n))


def _colour(rng: random.Random, lo: int = 0, hi: int = 255) -> tuple[int, int, int]:
    return tuple(rng.randint(lo, hi) for _ in range(3))


@dataclass(frozen=True)
class Template:
    """Everything fixed about one document type; `render` adds the per-instance fields."""

    seed: int
    width: int

    def render(self, instance: int) -> Image.Image:
        layout = random.Random(self.seed)  # the same choices for every instance of the template
        fields = random.Random(self.seed * 7919 + instance + 1)
        kind = layout.choice(sorted(_KINDS))
        wf, hf = _KINDS[kind]
        w, h = int(self.width * wf), int(self.width * hf)
        paper = _colour(layout, 200, 255)
        ink = _colour(layout, 0, 90)
        accent = _colour(layout, 30, 220)
        image = Image.new("RGB", (w, h), paper)
        draw = ImageDraw.Draw(image)
        fonts = layout.sample(_FONTS, 2)

        def font(size: int, which: int = 0) -> ImageFont.FreeTypeFont:
            # The basic layout engine: Pillow picks Raqm only where the system has libfribidi, and
            # the two place glyphs differently, so the data would depend on the machine.
            return ImageFont.truetype(
                str(_FONT_DIR / fonts[which]), size, layout_engine=ImageFont.Layout.BASIC
            )

        self._background(layout, draw, w, h, paper, accent)
        y = self._header(layout, draw, w, h, accent, paper, font)
        if layout.random() < 0.8:
            self._logo(layout, draw, w, h, accent, font)
        photo = None
        if kind == "card" or layout.random() < 0.3:
            photo = self._photo_box(layout, w, h, y)
            self._photo(fields, draw, photo, ink, paper)
        text_left = photo[2] + w // 30 if photo and photo[0] < w // 2 else w // 16
        text_right = photo[0] - w // 30 if photo and photo[0] >= w // 2 else w - w // 16
        y = self._fields(layout, fields, draw, text_left, text_right, y, h, ink, accent, font)
        if kind in ("form", "receipt", "letter") and y < h * 0.75:
            y = self._table(layout, fields, draw, w, h, y, ink, accent, font)
        if kind == "letter" and y < h * 0.85:
            self._paragraph(fields, draw, w, h, y, ink, font)
        draw.rectangle([0, 0, w - 1, h - 1], outline=accent, width=max(1, w // 160))
        return image

    @staticmethod
    def _background(rng, draw, w, h, paper, accent) -> None:
        style = rng.choice(["plain", "stripes", "waves", "dots"])
        tint = tuple((p * 3 + a) // 4 for p, a in zip(paper, accent, strict=True))
        if style == "stripes":
            step = rng.randint(8, 24)
            for x in range(-h, w, step):
                draw.line([(x, 0), (x + h, h)], fill=tint, width=1)
        elif style == "waves":
            amp, period = rng.randint(3, 10), rng.randint(20, 60)
            for y0 in range(0, h, rng.randint(12, 30)):
                pts = [(x, y0 + amp * np.sin(2 * np.pi * x / period)) for x in range(0, w + 4, 4)]
                draw.line(pts, fill=tint, width=1)
        elif style == "dots":
            step = rng.randint(10, 20)
            for y0 in range(0, h, step):
                for x0 in range(0, w, step):
                    draw.ellipse([x0, y0, x0 + 2, y0 + 2], fill=tint)

    @staticmethod
    def _header(rng, draw, w, h, accent, paper, font) -> int:
        band = int(h * rng.uniform(0.08, 0.16))
        if rng.random() < 0.6:
            draw.rectangle([0, 0, w, band], fill=accent)
            colour = paper
        else:
            draw.line([(0, band), (w, band)], fill=accent, width=3)
            colour = accent
        title = " ".join(_word(rng).upper() for _ in range(rng.randint(1, 3)))
        size = max(10, int(band * 0.45))
        x = w // 16 if rng.random() < 0.5 else w // 3
        draw.text((x, band // 4), title, fill=colour, font=font(size, 1))
        return band + h // 30

    @staticmethod
    def _logo(rng, draw, w, h, accent, font) -> None:
        r = int(min(w, h) * rng.uniform(0.05, 0.09))
        cx, cy = w - 2 * r, int(h * 0.07) + r // 2
        shape = rng.choice(["circle", "diamond", "shield"])
        colour = _colour(rng, 0, 200)
        if shape == "circle":
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=3)
        elif shape == "diamond":
            draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], outline=colour, width=3)
        else:
            draw.polygon(
                [(cx - r, cy - r), (cx + r, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=colour
            )
        draw.text((cx - r // 2, cy - r // 2), _word(rng, 1)[:2].upper(), fill=accent, font=font(r, 1))

    @staticmethod
    def _photo_box(rng, w, h, top) -> tuple[int, int, int, int]:
        pw = int(w * rng.uniform(0.22, 0.3))
        ph = int(pw * 1.25)
        left = w // 16 if rng.random() < 0.7 else w - w // 16 - pw
        return (left, top, left + pw, min(top + ph, h - 4))

    @staticmethod
    def _photo(rng, draw, box, ink, paper) -> None:
        x0, y0, x1, y1 = box
        draw.rectangle(box, fill=_colour(rng, 120, 230), outline=ink)
        skin = _colour(rng, 90, 230)
        cx, hw = (x0 + x1) // 2, (x1 - x0) // 4
        draw.ellipse([cx - hw, y0 + (y1 - y0) // 6, cx + hw, y0 + (y1 - y0) // 6 + 2 * hw], fill=skin)
        draw.pieslice(
            [x0 + 2, y1 - (y1 - y0) // 2, x1 - 2, y1 + (y1 - y0) // 2], 180, 360, fill=_colour(rng, 0, 150)
        )

    @staticmethod
    def _fields(layout, fields, draw, left, right, y, h, ink, accent, font) -> int:
        size = max(8, int(h * layout.uniform(0.035, 0.05)))
        rows = layout.randint(3, 6)
        captions = layout.sample(_CAPTIONS, rows)
        underline = layout.random() < 0.5
        for caption in captions:
            if y + 2 * size > h:
                break
            draw.text((left, y), caption, fill=accent, font=font(max(7, size * 2 // 3), 1))
            value = " ".join(_word(fields).capitalize() for _ in range(fields.randint(1, 2)))
            if fields.random() < 0.3:
                value = (
                    f"{fields.randint(1, 28):02d}.{fields.randint(1, 12):02d}.{fields.randint(1950, 2020)}"
                )
            draw.text(
                (left, y + size * 2 // 3),
                value[: max(4, (right - left) // (size // 2 + 1))],
                fill=ink,
                font=font(size),
            )
            if underline:
                draw.line([(left, y + size * 5 // 3 + 2), (right, y + size * 5 // 3 + 2)], fill=accent)
            y += size * 2
        return y + size

    @staticmethod
    def _table(layout, fields, draw, w, h, y, ink, accent, font) -> int:
        cols, rows = layout.randint(2, 4), layout.randint(3, 7)
        row_h = max(10, int(h * 0.04))
        left, right = w // 16, w - w // 16
        bottom = min(h - 8, y + rows * row_h)
        if layout.random() < 0.5:
            draw.rectangle([left, y, right, y + row_h], fill=accent)
        for r in range(rows + 1):
            draw.line([(left, y + r * row_h), (right, y + r * row_h)], fill=ink)
        xs = [left + (right - left) * c // cols for c in range(cols + 1)]
        for x in xs:
            draw.line([(x, y), (x, bottom)], fill=ink)
        for r in range(1, rows):
            for c in range(cols):
                draw.text(
                    (xs[c] + 3, y + r * row_h + 1),
                    str(fields.randint(1, 9999)),
                    fill=ink,
                    font=font(max(7, row_h - 4)),
                )
        return bottom + row_h

    @staticmethod
    def _paragraph(rng, draw, w, h, y, ink, font) -> None:
        size = max(7, h // 60)
        while y + size < h - size * 2:
            length = rng.randint(w // 2, w - w // 8)
            draw.line([(w // 16, y + size // 2), (length, y + size // 2)], fill=ink, width=max(1, size // 3))
            y += int(size * 1.6)


def photograph(image: Image.Image, rng: random.Random) -> Image.Image:
    """A capture of a document: perspective, lighting, blur and sensor noise."""
    w, h = image.size
    jitter = 0.06
    quad = [
        (rng.uniform(-jitter, jitter) * w + x, rng.uniform(-jitter, jitter) * h + y)
        for x, y in ((0, 0), (0, h), (w, h), (w, 0))
    ]
    warped = image.transform(
        (w, h),
        Image.Transform.QUAD,
        [c for p in quad for c in p],
        Image.Resampling.BILINEAR,
        fillcolor=_colour(rng, 0, 255),
    )
    array = np.asarray(warped).astype(np.float32)
    gain = rng.uniform(0.75, 1.15)
    tint = np.array([rng.uniform(0.9, 1.1) for _ in range(3)], dtype=np.float32)
    gradient = np.linspace(rng.uniform(0.8, 1.0), rng.uniform(1.0, 1.1), w, dtype=np.float32)
    array = array * gain * tint * gradient[None, :, None]
    noise = np.random.default_rng(rng.getrandbits(32)).normal(0, rng.uniform(1, 8), array.shape)
    array = np.clip(array + noise, 0, 255).astype(np.uint8)
    return Image.fromarray(array).filter(ImageFilter.GaussianBlur(rng.uniform(0, 1.0)))


def render_dataset(out_dir: str | Path, settings: dict) -> pd.DataFrame:
    """Render the demo dataset into out_dir; return its manifest (paths relative to out_dir).

    Template seeds for train, val and test come from disjoint ranges, so validation and test are
    zero-shot; validation and test images are photographs of their templates."""
    out_dir = Path(out_dir)
    seed, width = settings["seed"], settings["width"]
    photos = settings["photos_per_val_template"]
    rows = []
    jobs = [
        ("train", i, k)
        for i in range(settings["train_templates"])
        for k in range(settings["instances_per_train_template"])
    ]
    jobs += [("val", i, k) for i in range(settings["val_templates"]) for k in range(photos)]
    jobs += [("test", i, k) for i in range(settings["test_templates"]) for k in range(photos)]
    first_seed = {"train": 0, "val": 500_000, "test": 750_000}
    for split, index, copy in tqdm(jobs, desc="synth: rendering documents", unit="img", mininterval=1):
        template_seed = seed * 1_000_003 + first_seed[split] + index
        label = f"{split}_{index:04d}"
        image = Template(template_seed, width).render(instance=copy)
        if split != "train":
            image = photograph(image, random.Random(template_seed * 31 + copy))
        relative = Path(split) / label / f"{copy:02d}.png"
        (out_dir / relative).parent.mkdir(parents=True, exist_ok=True)
        image.save(out_dir / relative, optimize=False)
        rows.append(
            {
                "path": relative.as_posix(),
                "label": label,
                "split": split,
                "sha256": _io.sha256_file(out_dir / relative),
            }
        )
    return pd.DataFrame(rows)


def run_stage(settings: dict, manifest: str | Path) -> None:
    """Render the dataset beside `manifest` and write the manifest last (it is what is published)."""
    manifest = Path(manifest)
    frame = render_dataset(manifest.parent, settings["data"]["synth"])
    with _io.atomic_path(manifest) as tmp:
        frame.to_csv(tmp, index=False)
