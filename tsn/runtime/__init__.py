"""The process a run lives in: memory allocator, worker pools and the distributed process group.

Nothing here knows of videos or models; every other package may import it.
"""
