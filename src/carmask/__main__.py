"""`python -m carmask`: the CLI, for launchers that run modules (`torchrun -m carmask train ...`)."""

from carmask.cli import main

if __name__ == "__main__":  # not when a spawned worker (the input cache's) re-imports this module
    main(prog_name="carmask")
