"""`python -m carmask`: the CLI, for launchers that run modules (`torchrun -m carmask train ...`)."""
from carmask.cli import main

main(prog_name="carmask")
