"""Data layer: TSN frame sampling, annotation lists and their builders, transforms, Dataset and DataLoader."""
