"""``python -m mvit_det.data --root DIR``: writes the synthetic shapes dataset to DIR."""

import argparse
import os

from .shapes import generate_shapes_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", required=True, help="output folder")
    args = parser.parse_args()
    made = generate_shapes_dataset(args.root)
    print(("wrote" if made else "already present:"), os.path.abspath(args.root))


if __name__ == "__main__":
    main()
