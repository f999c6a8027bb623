"""Inference server core: pipeline, HTTP app, configuration and CLI."""
