"""Hostile ground (issue 12): servers that misbehave on purpose, lkice run as a child process
against them, and one acceptance test per class of hostile input."""
