"""QR code of a result page, drawn so that every module lands on whole screen pixels."""

from __future__ import annotations

from decimal import Decimal

import qrcode
import qrcode.image.svg

PIXELS_PER_MODULE = 4


class _PixelSvg(qrcode.image.svg.SvgPathFillImage):
    """An SVG QR code sized in CSS pixels rather than millimetres.

    qrcode's SVG images are sized in millimetres, so a browser scales each module by a fraction
    of a pixel and blurs its edges, which makes a camera's (or a decoder's) job harder.
    """

    def units(self, pixels, text=True):  # type: ignore[override]  # qrcode's own signature
        value = Decimal(pixels)
        return f"{value}px" if text else value


def qr_svg(url: str) -> bytes:
    """The SVG of a QR code for ``url``, with the standard four-module quiet zone."""
    image = qrcode.make(url, box_size=PIXELS_PER_MODULE, border=4, image_factory=_PixelSvg)
    return image.to_string()
