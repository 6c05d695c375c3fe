"""The node agent: polls the dispatcher, reconciles desired and running checks, runs them,
reports results and stats, and leaves gracefully."""
