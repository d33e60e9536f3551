"""Evaluation: inference over a loader, metrics, loading a trained model and the test report."""
