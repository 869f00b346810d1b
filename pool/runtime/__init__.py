"""What runs inside the actors: the Host's EXECUTE -> MONITOR -> RECOVER loop, residency, voting."""
