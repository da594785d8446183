"""Every PIL mode a dataset can hold is decoded with its real value range (not clipped white or
rounded to black by a plain RGB conversion), EXIF orientation is applied, and `dgmeta data verify`
says what the network is fed."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from dgmeta.cli.main import main
from dgmeta.data.dataset import Sample
from dgmeta.data.images import decode_rgb, load_images
from dgmeta.errors import DataError

RAMP = np.linspace(0.0, 1.0, 32 * 32).reshape(32, 32)  # left-to-right, top-to-bottom: black to white


def gray(image: Image.Image) -> np.ndarray:
    array = np.asarray(image).astype(int)
    assert array.shape[2] == 3 and (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all()
    return array[..., 0]


def expected_ramp() -> np.ndarray:
    return np.round(RAMP * 255).astype(int)


@pytest.mark.parametrize("name, make", [
    ("i16.png", lambda: Image.fromarray((RAMP * 65535).astype(np.uint16))),  # PIL reads it as I;16
    ("i16b.tiff", lambda: Image.frombytes("I;16B", (32, 32), (RAMP * 65535).astype(">u2").tobytes())),
    ("i32.tiff", lambda: Image.fromarray((RAMP * 65535).astype(np.int32), "I")),
    ("float.tiff", lambda: Image.fromarray(RAMP.astype(np.float32), "F")),
])
def test_wide_and_float_images_keep_their_full_range(tmp_path, name, make):
    path = tmp_path / name
    make().save(path)
    decoded = decode_rgb(path)
    assert decoded.mode in ("I;16", "I;16B", "I", "F")
    values = gray(decoded.image)
    assert np.abs(values - expected_ramp()).max() <= 1  # black stays black, white stays white
    plain = np.asarray(Image.open(path).convert("RGB"))[..., 0].astype(int)
    assert np.abs(plain - expected_ramp()).max() > 100  # what PIL's own conversion would have fed


def test_twelve_bit_data_in_a_sixteen_bit_file_fills_its_bit_depth(tmp_path):
    Image.fromarray((RAMP * 4095).astype(np.uint16)).save(tmp_path / "scan.png")
    assert np.abs(gray(decode_rgb(tmp_path / "scan.png").image) - expected_ramp()).max() <= 1


def test_signed_and_out_of_range_float_images_are_stretched_and_non_finite_refused(tmp_path):
    Image.fromarray((RAMP * 2000 - 1000).astype(np.int32), "I").save(tmp_path / "signed.tiff")
    values = gray(decode_rgb(tmp_path / "signed.tiff").image)
    assert (values.min(), values.max()) == (0, 255) and values[0, 0] == 0
    Image.fromarray((RAMP * 1e4).astype(np.float32), "F").save(tmp_path / "big.tiff")
    assert np.abs(gray(decode_rgb(tmp_path / "big.tiff").image) - expected_ramp()).max() <= 1
    nan = RAMP.astype(np.float32).copy()
    nan[3, 3] = np.nan
    Image.fromarray(nan, "F").save(tmp_path / "nan.tiff")
    with pytest.raises(DataError, match=r"nan\.tiff: it holds NaN or infinite pixel values"):
        decode_rgb(tmp_path / "nan.tiff")


def test_palette_transparency_la_and_cmyk(tmp_path):
    palette = Image.new("P", (8, 8), 0)
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * 762)
    palette.paste(1, (0, 0, 4, 8))
    palette.save(tmp_path / "palette.png")
    rgb = np.asarray(decode_rgb(tmp_path / "palette.png").image)
    assert tuple(rgb[0, 0]) == (200, 100, 50) and tuple(rgb[0, 7]) == (10, 20, 30)
    palette.save(tmp_path / "clear.png", transparency=0)
    rgb = np.asarray(decode_rgb(tmp_path / "clear.png").image)
    assert tuple(rgb[0, 7]) == (255, 255, 255) and tuple(rgb[0, 0]) == (200, 100, 50)
    la = Image.merge("LA", (Image.new("L", (8, 8), 40), Image.new("L", (8, 8), 0)))
    la.paste((40, 255), (0, 0, 4, 8))
    la.save(tmp_path / "la.png")
    rgb = np.asarray(decode_rgb(tmp_path / "la.png").image)
    assert tuple(rgb[0, 0]) == (40, 40, 40) and tuple(rgb[0, 7]) == (255, 255, 255)
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=100)  # pure red ink
    decoded = decode_rgb(tmp_path / "cmyk.jpg")
    red = np.asarray(decoded.image)[4, 4].astype(int)
    assert decoded.mode == "CMYK" and red[0] > 200 and red[1] < 60 and red[2] < 60


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # red on the left edge as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored left edge is shown at the top
    image.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    decoded = decode_rgb(tmp_path / "phone.jpg")
    assert decoded.rotated and decoded.image.size == (20, 40)
    rgb = np.asarray(decoded.image).astype(int)
    assert rgb[2, 10, 0] > 200 and rgb[2, 10, 2] < 60  # top is red
    assert rgb[37, 10, 2] > 200 and rgb[37, 10, 0] < 60  # bottom is blue
    cached = load_images([Sample(tmp_path / "phone.jpg", 0)], 16, cache_dir=tmp_path / "cache", progress=False)
    assert cached[0, 0, 1, 8] > 200 and cached[0, 0, 14, 8] < 60  # the cache is upright too


def test_verify_reports_what_it_feeds_the_network(tmp_path, capsys):
    root = tmp_path / "modes"
    for domain in ("d0", "d1"):
        for cls in ("a", "b"):
            folder = root / domain / cls
            folder.mkdir(parents=True)
            Image.new("RGB", (16, 16), (9, 9, 9)).save(folder / "rgb.png")
            Image.fromarray((RAMP * 65535).astype(np.uint16)).save(folder / "deep.png")
    exif = Image.Exif()
    exif[0x0112] = 3
    Image.new("RGB", (16, 16)).save(root / "d0" / "a" / "turned.jpg", exif=exif)
    Image.new("P", (16, 16)).save(root / "d1" / "b" / "pal.png")
    Image.fromarray((RAMP * 4095).astype(np.uint16)).save(root / "d1" / "a" / "camera12.png")  # 12-bit data
    main(["data", "verify", f"folder:{root}", "--split", "random", "-q"])
    out = "".join(capsys.readouterr().out.split())  # the console may wrap anywhere
    assert "".join("fed to the network as 8-bit RGB: 5 I;16 (wide integer gray, scaled from its range: "
            "4 16-bit 0..65535 scaled to 0..255, 1 12-bit 0..4095 scaled to 0..255), 5 RGB, "
            "1 P (palette); 1 turned upright by their EXIF orientation".split()) in out
