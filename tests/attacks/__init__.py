"""Attack tests: each holds exactly what one attacker holds and drives the real processes."""
