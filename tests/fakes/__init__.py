"""Test doubles that speak real protocols: a fake IB Gateway and a companion HTTP service."""
