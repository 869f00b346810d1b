"""The control side: the scheduler, the PoolManager loop, the Host wrapper, GPU control."""
