"""Code shared by every process: configuration, logging, errors, process plumbing.

The HSMs and the V-device import this package, never `custody`.
"""
