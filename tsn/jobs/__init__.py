"""Batch jobs that read videos and write data: JPEG frames, optical flow, training copies, metadata and checks.

They use the readers of ``tsn.io`` and the lists of ``tsn.data``; nothing here is imported by training.
"""
