"""tsn: Temporal Segment Networks for video action recognition.

Packages, lowest first (each imports only those before it; see docs/architecture.md):

- ``tsn.runtime``, ``tsn.fileio``, ``tsn.config``, ``tsn.checkpoint``, ``tsn.layout``: the process (allocator,
  worker pools, distributed group), atomic files, the typed configuration, the checkpoint file and the clip layout.
- ``tsn.io``: video readers (PyAV, decord, OpenCV, torchcodec, folders of JPEG frames): probe and read frames.
- ``tsn.data``: TSN sampling, annotation lists, transforms, Dataset, DataLoader and the device prefetcher.
- ``tsn.jobs``: batch jobs that write data (frames, flow, training copies, metadata, checks).
- ``tsn.models``: backbones, heads, consensus, temporal shift, the TSN model and fine-tuning controls.
- ``tsn.build``: the ``build_*`` functions that turn the config into datasets, loaders, models and optimizers.
- ``tsn.evaluation``: inference over a loader, metrics, trained-model loading, the test report.
- ``tsn.training``: the training loop, schedules, losses, weight average, the LP-FT linear probe.
- ``tsn.apps``: applications of a trained model (predict, stream, export, features, cross-validation, demo).
- ``tsn.measure``: benchmarks and soaks.

The clip tensor layout used everywhere is written down once, in ``tsn.layout``. Importing ``tsn``
sets how this process allocates large blocks (``tsn.runtime.allocator``: kept for reuse, with mimalloc in the
tools; ``TSN_ALLOCATOR=system`` keeps glibc's defaults).
"""

from tsn.runtime.allocator import configure as _configure_allocator

_configure_allocator()

__version__ = "0.1.0"
