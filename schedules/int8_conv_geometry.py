"""Geometry of the int8 direct convolutions: padded phase planes and the extended output.

A strided convolution reads its padded input through ``sh x sw`` phase planes (space to
depth): tap ``(kh, kw)`` of output ``(oh, ow)`` is pixel ``(oh + kh // sh, ow + kw // sw)`` of
plane ``(kh % sh, kw % sw)``. Each plane is stored flat, ``Wq`` pixels per row, and the output
is computed on the same extended width: output pixel ``q = oh * Wq + ow`` reads plane pixel
``q + (kh // sh) * Wq + kw // sw``, so consecutive outputs read consecutive inputs for every
tap and stride. The ``Wq - OW`` extra columns per row are computed and dropped.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConvGeometry:
    """Sizes of one convolution as the int8 kernels compute it.

    Attributes
    ----------
    n, c, h, w : the NCHW input.
    o, kh, kw : output channels and kernel size; ``groups`` divides ``c`` and ``o``.
    sh, sw : strides. ``pt, pl, pb, pr``: padding (top, left, bottom, right).
    oh, ow : the output size.
    ph, pw : phase planes used along each axis (``min(stride, kernel)``).
    hq, wq : rows and columns of one phase plane.
    q : extended output pixels ``oh * wq``; ``qp`` that padded to whole vector tiles.
    rows : plane rows stored (enough for every tap of every extended output pixel).
    """

    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    groups: int
    sh: int
    sw: int
    pt: int
    pl: int
    pb: int
    pr: int
    lanes: int

    def __post_init__(self) -> None:
        if self.c % self.groups or self.o % self.groups:
            raise ValueError(f"groups {self.groups} must divide input channels {self.c} and "
                             f"output channels {self.o}")
        if min(self.sh, self.sw) < 1 or min(self.pt, self.pl, self.pb, self.pr) < 0:
            raise ValueError(f"bad strides {(self.sh, self.sw)} or padding "
                             f"{(self.pt, self.pl, self.pb, self.pr)}")
        if self.oh < 1 or self.ow < 1:
            raise ValueError(f"kernel {self.kh}x{self.kw} larger than the padded input "
                             f"{self.h + self.pt + self.pb}x{self.w + self.pl + self.pr}")

    @property
    def oh(self) -> int:
        return (self.h + self.pt + self.pb - self.kh) // self.sh + 1

    @property
    def ow(self) -> int:
        return (self.w + self.pl + self.pr - self.kw) // self.sw + 1

    @property
    def ph(self) -> int:
        return min(self.sh, self.kh)

    @property
    def pw(self) -> int:
        return min(self.sw, self.kw)

    @property
    def hq(self) -> int:
        return -(-(self.h + self.pt + self.pb) // self.sh)

    @property
    def wq(self) -> int:
        return -(-(self.w + self.pl + self.pr) // self.sw)

    @property
    def q(self) -> int:
        return self.oh * self.wq

    @property
    def qvec(self) -> int:
        """Vectors of extended output pixels; past 4, a multiple of 4 (so tiles divide)."""
        v = -(-self.q // self.lanes)
        return v if v <= 4 else -(-v // 4) * 4

    @property
    def qp(self) -> int:
        return self.qvec * self.lanes

    @property
    def rows(self) -> int:
        last = self.qp - 1 + (self.kh - 1) // self.sh * self.wq + (self.kw - 1) // self.sw
        return max(self.hq, last // self.wq + 1)

    @property
    def flat(self) -> int:
        """Stored pixels per plane."""
        return self.rows * self.wq

    def tap_offset(self, kh, kw):
        """Flat offset of tap ``(kh, kw)`` inside its phase plane (works on TIR expressions)."""
        return kh // self.sh * self.wq + kw // self.sw

    def macs(self) -> int:
        return self.n * self.o * self.oh * self.ow * (self.c // self.groups) * self.kh * self.kw
