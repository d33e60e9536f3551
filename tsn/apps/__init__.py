"""Applications of a trained model: prediction, live streams, export, features and retrieval, cross-validation, the demo."""
