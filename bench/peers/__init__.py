"""Peers: earlier designs reproduced faithfully, so each is timed beside ours in the same run."""
