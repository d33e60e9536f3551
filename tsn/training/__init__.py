"""Training: the loop, schedules, losses, weight averaging and the linear probe that initialises the head (LP-FT)."""
