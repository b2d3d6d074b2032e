"""The reliability suite: fault scenarios on a Ferry deployment of its own, the auditor deciding (make chaos)."""
