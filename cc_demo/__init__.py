"""The end-to-end demo: the product's story and its attacks, run against a live deployment.

Not needed by a production install: it holds attack tools and reads the parts' own state.
"""
