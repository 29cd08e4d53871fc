"""The air-gapped HSM: reachable only over the serial link and SMS. Holds the HD seeds."""
