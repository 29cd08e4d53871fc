"""Simulated hardware and outside world, reached only through their real interfaces."""
