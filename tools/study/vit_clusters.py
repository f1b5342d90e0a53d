#!/usr/bin/env python3
"""WeGeFT's patch clusters drawn over the images, from examples/03_vit_fashion.cpp's clusters.json.

  vit_clusters.py CLUSTERS_JSON OUT_PNG

One row per test image: the image, then one panel per block where each patch is coloured by the
cluster its token joins in that block's q projection (argmax over the r columns of C = W Phi^T of
the token's (x W^T) C scores), drawn half-transparent over the image.
"""
import json
import sys


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    with open(sys.argv[1]) as f:
        d = json.load(f)
    side, patch, rank = d["image_size"], d["patch_size"], d["rank"]
    grid = side // patch
    images = d["images"]
    layers = len(images[0]["clusters"])
    cmap = plt.get_cmap("tab20" if rank > 10 else "tab10", rank)
    fig, axes = plt.subplots(len(images), layers + 1, figsize=(1.6 * (layers + 1), 1.6 * len(images)),
                             squeeze=False)
    for row, img in enumerate(images):
        px = np.array(img["pixels"], dtype=float).reshape(side, side) / 255.0
        axes[row][0].imshow(px, cmap="gray", vmin=0, vmax=1)
        axes[row][0].set_ylabel(d["classes"][img["label"]], fontsize=8)
        for layer, clusters in enumerate(img["clusters"]):
            c = np.array(clusters).reshape(grid, grid)
            full = np.kron(c, np.ones((patch, patch)))
            ax = axes[row][layer + 1]
            ax.imshow(px, cmap="gray", vmin=0, vmax=1)
            ax.imshow(full, cmap=cmap, vmin=-0.5, vmax=rank - 0.5, alpha=0.55, interpolation="nearest")
            if row == 0:
                ax.set_title(f"block {layer} {d['module']}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"WeGeFT r = {rank}: the cluster of each {patch}x{patch} patch (argmax over the columns "
                 f"of W Phi^T)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(sys.argv[2], dpi=110)
    plt.close(fig)
    print(f"wrote {sys.argv[2]}")


if __name__ == "__main__":
    main()
