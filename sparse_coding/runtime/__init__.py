"""How a run executes: ranks under torchrun, sharded and checkpointed passes, phases, progress, memory."""
