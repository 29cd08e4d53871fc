"""GSM world: the 7-bit alphabet, the AT-command modem firmware and the carrier (SMSC)."""
