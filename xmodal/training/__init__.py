"""The algorithm: the train loop, the losses (pure functions), gradient accumulation."""
