"""The reference merchant website: what a customer's site exposes to its V-device.

It holds the address batches the merchant fetched from the custody API until the V-device has
verified them, and the merchant's withdrawals, encrypted for the V-device, until the V-device
reports their transaction hash (reference section 2). See `README.md` in this directory.
"""
