"""cast.worker: the agent that leases runs and executes them."""
