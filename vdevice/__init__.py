"""The customer's phone (the chaincloud-v app), emulated: verifies batches, countersigns sends."""
