"""tsn: Temporal Segment Networks for video action recognition.

Subpackages, by layer (each only imports the ones above it):

- ``tsn.io``: video readers (decord, OpenCV, folders of JPEG frames): probe and read frames.
- ``tsn.data``: TSN sampling, annotation lists, transforms, Dataset and DataLoader.
- ``tsn.models``: backbones, heads, consensus, the TSN model and fine-tuning controls.
- ``tsn.engine``: training and evaluation loops, metrics, checkpoints (joins data and models).
- ``tsn.config``: the typed configuration read by ``tools/`` and the ``build_*`` functions.

The clip tensor layout used everywhere is written down once, in ``tsn.layout``. Importing ``tsn``
sets how this process allocates large blocks (``tsn.allocator``: kept for reuse, with mimalloc in the
tools; ``TSN_ALLOCATOR=system`` keeps glibc's defaults).
"""

from tsn.allocator import configure as _configure_allocator

_configure_allocator()

__version__ = "0.1.0"
