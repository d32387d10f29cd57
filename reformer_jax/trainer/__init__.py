"""Training infrastructure behind `reformer_jax.train`, `.evaluate` and `.sample`.

One job per module: `experiment` (what a run is), `tasks` (what is trained: the task
protocol and one module per task), `optim` (optax optimiser and
schedule), `steps` (train/eval steps and their compilation), `sharding` (device
mesh), `checkpointing` (orbax), `metrics` (TensorBoard, console, JSON lines),
`gin_setup` (gin registration and parsing), `sampling` (text generation),
`cli` (the command-line edge).
"""
