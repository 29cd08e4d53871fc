"""`cc-recover`: recover the custody wallets' coins with no part of the custody software.

It imports nothing from this project (only embit and the standard library), so a customer or
an auditor can run it on an offline machine from a copy of this directory (docs/recovery.md).
"""
