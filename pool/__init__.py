"""Pool: the residency plan, the VRAM ledger and the actors that apply them."""
