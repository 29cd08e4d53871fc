"""The online HSM: keys in a PKCS#11 token, signs its share, relays to the cold HSM."""
