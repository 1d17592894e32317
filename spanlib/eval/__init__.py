"""Evaluation: attention metrics, linear / few-shot / k-NN probes, the evaluate verb."""
