"""Bitcoin wallet core shared by custody, the HSMs and the V-device (derive, build, sign)."""
