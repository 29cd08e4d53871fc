"""The custody API service and the operator's CLI. Holds no private key."""
