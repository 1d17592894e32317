"""What the notebooks call: runs, the paper's numbers, sweeps, the attention browser."""
