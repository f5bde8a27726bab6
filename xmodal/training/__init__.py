"""The training core: the loop, the train state, losses, sharding, checkpointing, accumulation."""
