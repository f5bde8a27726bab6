"""What a run stands on: the train state and its shardings, checkpointing, the embed loop,
metrics, preemption and multi-host start-up (below `xmodal.run`, above data and models)."""
