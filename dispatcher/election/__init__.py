"""Leader election: one interface (``Leadership``), several backends."""
