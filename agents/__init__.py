"""Agents: identity, spec, memory and the state machine; engines that run them."""
