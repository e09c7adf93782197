#!/usr/bin/env python3
"""Oracle for element encoding: ml_dtypes astype (round to nearest even, the format's own overflow rule).

usage: ml_dtypes_encode.py IN.f32 OUT_DIR NAME...
Reads little-endian float32 values from IN.f32 and writes, for each NAME (qc's element spelling), the
codes `np.asarray(x, np.float32).astype(T).view(np.uint8)` to OUT_DIR/NAME.u8.
"""
import os
import sys

import ml_dtypes as md
import numpy as np

TYPES = {
    "e2m1": md.float4_e2m1fn,
    "e2m3": md.float6_e2m3fn,
    "e3m2": md.float6_e3m2fn,
    "e4m3fn": md.float8_e4m3fn,
    "e5m2": md.float8_e5m2,
    "e4m3fnuz": md.float8_e4m3fnuz,
    "e5m2fnuz": md.float8_e5m2fnuz,
    "e4m3": md.float8_e4m3,
    "e3m4": md.float8_e3m4,
    "e8m0": md.float8_e8m0fnu,
}


def main():
    src, out_dir, names = sys.argv[1], sys.argv[2], sys.argv[3:]
    x = np.fromfile(src, dtype="<f4")
    with np.errstate(all="ignore"):
        for name in names:
            codes = x.astype(TYPES[name]).view(np.uint8)
            codes.tofile(os.path.join(out_dir, name + ".u8"))


if __name__ == "__main__":
    main()
