"""Calibration images for the MLPerf Tiny IC ResNet-8: the 26 natural images of ../shared and their mirror images.

    python3 scripts/make_ic_calib.py [--shared ../shared] [--out data/ic_calib_natural52.npy]

Source: ../shared/data/natural_images_nhwc_32x32x3_0to255.npy (scikit-image sample data, centre-cropped and resized
to 32x32). Writes uint8 52x32x32x3 NHWC, 0-255: the 26 images, then the same flipped left-right. They are out of
CIFAR-10's distribution; they stand in for the user's own unlabelled data, and the labelled CIFAR-10 images
(data/cifar10_eval.npz) stay held out for evaluation.
"""
import argparse
import os

import numpy as np


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.path.join(here, "..", "..", "shared"))
    ap.add_argument("--out", default=os.path.join(here, "..", "data", "ic_calib_natural52.npy"))
    args = ap.parse_args()
    x = np.load(os.path.join(args.shared, "data", "natural_images_nhwc_32x32x3_0to255.npy"))
    assert x.shape == (26, 32, 32, 3), x.shape
    both = np.concatenate([x, x[:, :, ::-1, :]]).round().clip(0, 255).astype(np.uint8)
    np.save(args.out, both)
    print(f"wrote {args.out}: {both.shape} {both.dtype}")


if __name__ == "__main__":
    main()
