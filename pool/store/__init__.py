"""What is kept on disk: checkpoints, the agent table, the result journal, dead letters."""
